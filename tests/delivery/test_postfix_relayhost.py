"""docs/postfix.md, tried as written: a real Postfix (Debian's, throwaway directories) with
`relayhost` pointing at Mailward's submission listener relays a message end to end, over TLS it
verifies against Mailward's certificate and with SMTP AUTH."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import free_port, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.postfix import postfix_instance
from tests.stages.dlp import builders as b

DOCS = Path(__file__).resolve().parent.parent.parent / "docs" / "postfix.md"
PASSWORD = "relay-password-for-the-test"


def docs_main_cf(host: str, port: int, ca_file: Path) -> str:
    """The main.cf block of docs/postfix.md, with the test's host, port and CA."""
    text = DOCS.read_text()
    block = re.search(r"`/etc/postfix/main.cf`:\n\n```\n(.*?)```", text, re.S)
    assert block is not None
    main = block.group(1).replace("[mailward.example.com]:587", f"[{host}]:{port}")
    main = main.replace("/etc/ssl/certs/ca-certificates.crt", str(ca_file))
    return main.replace("/etc/postfix/", "{etc}/")


def docs_map(name: str, host: str, port: int, match: str) -> str:
    text = DOCS.read_text()
    block = re.search(rf"`/etc/postfix/{name}`.*?:\n\n```\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1).replace("[mailward.example.com]:587", f"[{host}]:{port}") \
        .replace("match=mailward.example.com", f"match={match}").replace("THE-PASSWORD", PASSWORD)


async def test_postfix_relays_through_mailward_with_verified_tls_and_auth(
        world: MailWorld, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    if os.geteuid() != 0:
        pytest.fail("Postfix's master runs as root; run the suite as root (as CI does)")
    await world.start_dns({("clinic.test", "MX"): ["10 mx.clinic.test."],
                           ("mx.clinic.test", "A"): ["127.0.0.21"]})
    sink = await world.sink("127.0.0.21")
    port = free_port()
    gateway = await world.gateway({
        "listeners": [{"address": "127.0.0.1", "port": port, "starttls": "required", "auth": "required",
                       "name": "submission"}],
        "relay": {"networks": [], "users_file": str(tmp_path / "users.yaml")}})
    config_file = gateway.gateway.config.source
    assert config_file is not None
    password_file = tmp_path / "relay-password"
    password_file.write_text(PASSWORD + "\n")
    added = subprocess.run([sys.executable, "-m", "gateway", "-c", str(config_file), "user", "add",
                            "postfix-relay", "--password-file", str(password_file)],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    gateway.gateway.reload()

    # Postfix's daemons run as the postfix user: its directories must be reachable for it, and
    # pytest's temporary directories are private.
    holder = tempfile.TemporaryDirectory(prefix="mailward-postfix-")
    workdir = Path(holder.name)
    main = docs_main_cf("127.0.0.1", port, tls_files["ca_file"])
    files = {"tls_policy": docs_map("tls_policy", "127.0.0.1", port, "mailward.test"),
             "sasl_passwd": docs_map("sasl_passwd", "127.0.0.1", port, "mailward.test")}
    with postfix_instance(workdir, ("127.0.0.1", port), main_extra=main, files=files) as (postfix_port, _, _):
        # Submit to Postfix as a client would; Postfix relays to Mailward, Mailward delivers.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=postfix_port, start_tls=False,
                                 local_hostname="client.test")
        code, text = await send(client, SENDER, ["pat@clinic.test"],
                                b.message("Relayed by Postfix", sender=SENDER, to="pat@clinic.test"))
        assert code == 250, text
        [received] = await eventually(lambda: sink.messages, timeout=30)
    holder.cleanup()
    assert received.recipients == ["pat@clinic.test"] and b"Relayed by Postfix" in received.content
    directory = gateway.gateway.audit.directory
    assert directory is not None
    records = [json.loads(line) for path in directory.glob("audit-*.jsonl")
               for line in path.read_text().splitlines()]
    accepted = next(r for r in records if r["event"] == "received")
    assert accepted["auth"] == "postfix-relay" and accepted["relay"] == "auth"
    assert accepted["tls"]["version"] in ("TLSv1.2", "TLSv1.3")

