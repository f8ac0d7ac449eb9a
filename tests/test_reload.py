"""SIGHUP reaches delivery, with delivery in its own process (the default) and in the main one:
after a reload the next message takes the new route, the new TLS policy entry, the new egress
pool and the new DKIM key, without a restart."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
import trustme
import yaml

from tests.conftest import GatewayProcess, message
from tests.dkimverify import make_key
from tests.polling import eventually, free_port
from tests.smtpsink import start_sink

SENDER = "dr@hospital.test"


def selector_of(content: bytes) -> str:
    match = re.search(rb"DKIM-Signature:[^\n]*(?:\n[ \t][^\n]*)*", content)
    assert match is not None, "the message is DKIM signed"
    found = re.search(rb"\bs=([A-Za-z0-9-]+)", match.group(0))
    assert found is not None
    return found.group(1).decode()


async def submit(gw: GatewayProcess, marker: str) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
    await client.connect()
    content = message(marker).replace(b"From: sender@example.com", f"From: {SENDER}".encode())
    await client.sendmail(SENDER, ["pat@clinic.test"], content)
    await client.quit()


@pytest.mark.parametrize("separate_process", [True, False], ids=["delivery-process", "one-process"])
async def test_a_reload_changes_route_tls_policy_pool_and_dkim_key_of_the_next_delivery(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path, ca: trustme.CA,
        separate_process: bool) -> None:
    port = free_port("127.0.0.21")
    first, first_server = await start_sink("127.0.0.21", port)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mx.clinic.test").configure_cert(tls)
    second, second_server = await start_sink("127.0.0.22", port, tls_context=tls)
    ca_file = tmp_path / "mx-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    old_key, new_key = make_key(tmp_path, "hospital.test", "old"), make_key(tmp_path, "hospital.test", "new")
    gw = gateway_process(
        delivery={"paused": False, "separate_process": separate_process, "nameservers": ["127.0.0.1:9"],
                  "routes": {"clinic.test": f"127.0.0.21:{port}"}, "ca_file": str(ca_file),
                  "retry_schedule": ["1s"], "mta_sts": False, "dane": False},
        domains={"hospital.test": {"dkim": [old_key.config]}})
    try:
        gw.start()
        await submit(gw, "BEFORE")
        await eventually(lambda: first.messages, timeout=20)
        before = first.messages[0]
        assert selector_of(before.content) == "old" and before.tls_version is None

        settings = yaml.safe_load(gw.config_file.read_text())
        settings["delivery"]["routes"] = {"clinic.test": f"127.0.0.22:{port}"}
        settings["delivery"]["tls_policy"] = {"clinic.test": "encrypt"}
        settings["delivery"]["pools"] = {"new": {"ips": [{"address": "127.0.0.30",
                                                          "ehlo": "out.hospital.test"}]}}
        settings["domains"] = {"hospital.test": {"dkim": [new_key.config]}}
        gw.config_file.write_text(yaml.safe_dump(settings))
        gw.signal(signal.SIGHUP)
        reloads = 2 if separate_process else 1  # the delivery process reloads the same file itself
        await eventually(lambda: gw.log.read_text().count("event=reloaded") >= reloads, timeout=20)
        assert "Exception in callback" not in gw.log.read_text()

        await submit(gw, "AFTER")
        await eventually(lambda: second.messages, timeout=20)
        after = second.messages[0]
        assert len(first.messages) == 1  # the new route, not the old one
        assert after.tls_version is not None  # the new TLS policy entry: encrypt
        assert (after.peer, after.helo) == ("127.0.0.30", "out.hospital.test")  # the new pool
        assert selector_of(after.content) == "new"  # the new DKIM key
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.signal(signal.SIGTERM)  # a drain QUITs the cached connections: the sinks close theirs
            await asyncio.to_thread(gw.wait)
        first_server.close()
        second_server.close()
        await eventually(lambda: not first.open_connections and not second.open_connections, timeout=10)
