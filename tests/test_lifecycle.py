"""`mailward run` lifecycle: SIGTERM drains open transactions, SIGHUP reloads or refuses."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
import yaml

from gateway.spool import QueueState
from tests.conftest import GatewayProcess, message, open_test_spool, wait_for
from tests.ingress.test_limits import read_reply


async def test_sigterm_lets_an_open_transaction_finish_then_exits_cleanly(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    busy_reader, busy = await asyncio.open_connection("127.0.0.1", gw.port)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", gw.port)
    for reader in (busy_reader, idle_reader):
        await read_reply(reader)
    busy.write(b"EHLO c.test\r\nMAIL FROM:<dr@example.com>\r\nRCPT TO:<p@example.org>\r\nDATA\r\n")
    for _ in range(4):
        await read_reply(busy_reader)
    busy.write(b"Subject: DRAIN1\r\n\r\nfirst half, ")  # mid-DATA when the signal arrives
    await busy.drain()

    gw.signal(signal.SIGTERM)
    # The idle session is told at once and closed.
    assert (await read_reply(idle_reader)).startswith(b"421 4.3.2")
    # The busy one finishes its message and gets its 250, then the 421.
    busy.write(b"second half\r\n.\r\n")
    assert (await read_reply(busy_reader)).startswith(b"250 2.0.0 Ok: queued as")
    assert (await read_reply(busy_reader)).startswith(b"421 4.3.2")
    assert await asyncio.get_running_loop().run_in_executor(None, gw.wait) == 0
    spool = open_test_spool(gw.config_file)
    assert len(spool.ids(QueueState.INCOMING)) == 1
    spool.close()
    busy.close()
    idle.close()


async def test_sighup_with_a_bad_config_keeps_the_running_one(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    good = gw.config_file.read_text()
    gw.config_file.write_text(good + "unknown_section: {}\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "event=reload_refused" in gw.log.read_text())
    assert "unknown_section: unknown key" in gw.log.read_text()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
    await client.connect()
    assert (await client.sendmail("dr@example.com", ["p@example.org"], message()))[1].startswith("2.0.0")
    await client.quit()


async def test_sighup_applies_new_relay_networks_without_dropping_connections(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    open_client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
    await open_client.connect()
    settings = yaml.safe_load(gw.config_file.read_text())
    settings["relay"]["networks"] = ["127.0.0.0/8"]
    gw.config_file.write_text(yaml.safe_dump(settings))
    outsider = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False,
                               source_address=("127.0.0.99", 0))
    await outsider.connect()
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):  # not reloaded yet: still refused
        await outsider.sendmail("dr@example.com", ["p@example.org"], message())
    outsider.close()

    gw.signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in gw.log.read_text())
    outsider = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False,
                               source_address=("127.0.0.99", 0))
    await outsider.connect()
    assert (await outsider.sendmail("dr@example.com", ["p@example.org"], message()))[1].startswith("2.0.0")
    await outsider.quit()
    assert (await open_client.noop()).code == 250  # the connection from before the reload lives on
    await open_client.quit()


async def test_systemd_hears_ready_reloading_and_stopping(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(30)  # a wait for the gateway's message, not a sleep
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    gw = gateway_process()
    gw.start()
    loop = asyncio.get_running_loop()

    async def heard() -> str:
        return (await loop.run_in_executor(None, listener.recv, 4096)).decode()

    ready = await heard()
    assert "READY=1" in ready and f"MAINPID={gw.proc.pid}" in ready  # type: ignore[union-attr]
    gw.signal(signal.SIGHUP)
    assert "RELOADING=1" in await heard()
    assert "READY=1" in await heard()
    gw.signal(signal.SIGTERM)
    assert "STOPPING=1" in await heard()
    assert await loop.run_in_executor(None, gw.wait) == 0
    listener.close()


async def test_sighup_with_a_new_policy_applies_to_the_next_message_while_a_session_completes(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    rule = ("match: first\nprotect: sensitive\nrules:\n  - name: stop-ssn\n    action: {action}\n"
            "    when: {{detectors: {{ssn: 1}}}}\n")
    (policies / "p.yaml").write_text(rule.format(action="tag"))
    gw = gateway_process(policies_dir=str(policies), dlp={"workers": 0})
    gw.start()
    session = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
    await session.connect()
    await session.mail("dr@example.com")
    await session.rcpt("p@example.org")  # a transaction in progress across the reload

    (policies / "p.yaml").write_text(rule.format(action="block"))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in gw.log.read_text())
    blocked_body = message("SSN 219-45-6789")
    # The session from before the reload lives on and is answered by the policy now in force.
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await session.data(blocked_body)
    assert refused.value.code == 550
    assert (await session.sendmail("dr@example.com", ["p@example.org"], message("no numbers")))[1] \
        .startswith("2.0.0")
    await session.quit()


async def test_sigterm_during_a_load_run_loses_no_acknowledged_message(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process(limits={"drain_timeout": "5s"})
    gw.start()
    acknowledged: list[str] = []

    async def client(number: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=10)
        try:
            await smtp.connect()
            for i in range(200):  # bounded: the signal ends it long before
                _, reply = await smtp.sendmail("dr@example.com", ["p@example.org"], message(f"L{number}-{i}"))
                acknowledged.append(reply.split()[-1])
        except (aiosmtplib.SMTPException, OSError):
            return  # the drain closed us: what was acknowledged is what counts

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: len(acknowledged) >= 40, 30)
    gw.signal(signal.SIGTERM)
    await asyncio.gather(*clients)
    assert await asyncio.get_running_loop().run_in_executor(None, gw.wait) == 0
    spool = open_test_spool(gw.config_file)
    queued = set(spool.ids(QueueState.INCOMING)) | set(spool.ids(QueueState.DEFERRED))
    spool.close()
    assert set(acknowledged) <= queued and len(acknowledged) >= 40
