"""A throwaway Postfix (Debian's) in its own directories, for the benchmarks' reference and for
tests that put Postfix in front of Mailward as admins do. Runs as root (Postfix's master needs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.polling import free_port, port_open, wait_for

POSTFIX_RELAY = """\
relayhost = [{sink_host}]:{sink_port}
smtp_tls_security_level = may
"""
POSTFIX_HOLD = """\
# Accepted mail is put on hold by cleanup, so it stays queued (as in Mailward's spool here) and
# qmgr has nothing to deliver; qmgr must still run, or cleanup stalls on its missing trigger.
smtpd_end_of_data_restrictions = check_client_access static:HOLD
"""

POSTFIX_MAIN = """\
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
compatibility_level = 3.6
maillog_file = {queue}/maillog
maillog_file_prefixes = {queue}
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
"""

# Only what accepting mail needs: smtpd, cleanup, trivial-rewrite, qmgr and their helpers.
POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
proxymap  unix  - - n - - proxymap
anvil     unix  - - n - 1 anvil
qmgr      unix  n - n 300 1 qmgr
postlog   unix-dgram n - n - 1 postlogd
"""
POSTFIX_MASTER_RELAY = """\
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
tlsmgr    unix  - - n 1000? 1 tlsmgr
"""


@contextmanager
def postfix_instance(workdir: Path, sink: tuple[str, int] | None = None, *, main_extra: str = "",
                     files: dict[str, str] | None = None) -> Iterator[tuple[int, Path, None]]:
    """Accepting only (mail put on hold), or with `sink` relaying everything to it; `main_extra`
    is appended to main.cf, `files` (name: text) are written beside it (maps; postmap is run on
    each)."""
    port = free_port()
    workdir.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach their queue
    etc, queue, data = workdir / "etc", workdir / "queue", workdir / "data"
    for directory in (etc, queue, data):
        directory.mkdir(parents=True)
    shutil.chown(data, "postfix")
    main = POSTFIX_MAIN.format(queue=queue, data=data)
    master = POSTFIX_MASTER.format(port=port)
    if sink is None:
        main += POSTFIX_HOLD
    else:
        main += POSTFIX_RELAY.format(sink_host=sink[0], sink_port=sink[1])
        master += POSTFIX_MASTER_RELAY
    (etc / "main.cf").write_text(main + main_extra.format(etc=etc))
    (etc / "master.cf").write_text(master)
    env = {**os.environ, "MAIL_CONFIG": str(etc)}
    for name, text in (files or {}).items():
        (etc / name).write_text(text)
        (etc / name).chmod(0o600)
        subprocess.run(["postmap", str(etc / name)], env=env, check=True, capture_output=True)
    started = subprocess.run(["postfix", "-c", str(etc), "start"], env=env, capture_output=True,
                             text=True)
    if started.returncode != 0:
        log = queue / "maillog"
        detail = log.read_text()[-2000:] if log.exists() else started.stderr
        raise RuntimeError(f"Postfix did not start: {started.stdout}{detail}")
    try:
        wait_listening(port)
        yield port, queue / "hold", None
    finally:
        subprocess.run(["postfix", "-c", str(etc), "stop"], env=env, check=False, capture_output=True)





def wait_listening(port: int, timeout: float = 30, host: str = "127.0.0.1") -> None:
    wait_for(lambda: port_open(port, host), timeout)
