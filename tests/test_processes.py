"""Several SMTP ingest processes on one machine: they share the listening port (SO_REUSEPORT),
all accept mail into the one spool, reload together and drain together."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from gateway.spool import QueueState
from tests.conftest import GatewayProcess, message, open_test_spool, wait_for


def children(parent: int, role: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and role.encode() in cmdline:
            found.append(int(proc.name))
    return found


async def test_three_ingest_processes_share_the_port_and_the_spool(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process(ingest_processes=3)
    gw.start()
    assert gw.proc is not None
    wait_for(lambda: len(children(gw.proc.pid, "ingest-worker")) == 2)  # type: ignore[union-attr]
    wait_for(lambda: gw.log.read_text().count("event=listening") == 3)

    async def one(number: int) -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=20)
        await client.connect()
        _, reply = await client.sendmail("dr@example.com", ["p@example.org"], message(f"P{number}"))
        await client.quit()
        return reply.split()[-1]

    queue_ids = await asyncio.gather(*(one(n) for n in range(40)))
    spool = open_test_spool(gw.config_file)
    assert set(spool.ids(QueueState.INCOMING)) == set(queue_ids)
    spool.close()
    accepting = set(re.findall(r"mailward\.smtpd\[(\d+)\] event=queued", gw.log.read_text()))
    assert len(accepting) >= 2, accepting  # the kernel spread the connections

    workers = children(gw.proc.pid, "ingest-worker")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.log.read_text().count("event=reloaded") == 3)
    gw.signal(signal.SIGTERM)
    assert await asyncio.get_running_loop().run_in_executor(None, gw.wait) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
