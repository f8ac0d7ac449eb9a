"""Nothing acknowledged is lost: SIGKILL the gateway during a load of 500 messages."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import aiosmtplib

from gateway.spool import QueueState
from tests.conftest import GatewayProcess, message, open_test_spool

TOTAL = 500
SESSIONS = 10
KILL_AFTER = 200


async def test_sigkill_during_load_loses_no_acknowledged_message(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    acknowledged: list[str] = []
    killed = asyncio.Event()
    markers = iter(f"CRASHMARK{i:04d}" for i in range(TOTAL))

    async def sender() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=10)
        try:
            await client.connect()
            for marker in markers:
                await client.sendmail("dr@example.com", ["p@example.org"], message(marker))
                acknowledged.append(marker)  # the 250 arrived
                if len(acknowledged) == KILL_AFTER and not killed.is_set():
                    gw.signal(signal.SIGKILL)
                    killed.set()
        except (aiosmtplib.SMTPException, OSError):
            return  # the gateway died under us: whatever was not acknowledged may be gone

    await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(SESSIONS))), 120)
    assert killed.is_set() and len(acknowledged) >= KILL_AFTER
    gw.wait()

    gw.start()  # restart: recovery runs before serving
    spool = open_test_spool(gw.config_file)
    found: dict[str, int] = {}
    for queue_id in spool.ids(QueueState.INCOMING):
        content = spool.content(queue_id)
        marker = content.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
        found[marker] = found.get(marker, 0) + 1
    for marker in acknowledged:
        assert found.get(marker) == 1, f"{marker} acknowledged but found {found.get(marker, 0)} times"
    assert sum(found.values()) <= len(acknowledged) + SESSIONS  # at most the in-flight extras
    for path in spool.directory.rglob("*"):
        if path.is_file():
            assert b"CRASHMARK" not in path.read_bytes()
    spool.close()


async def test_recipient_delivered_before_a_kill_is_still_delivered_after_restart(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    from gateway.message import RecipientState, RecipientStatus

    gw = gateway_process()
    gw.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=10)
    await client.connect()
    await client.sendmail("dr@example.com", ["a@example.org", "b@example.org"], message("J1"))
    await client.quit()
    spool = open_test_spool(gw.config_file)
    queue_id = spool.ids(QueueState.INCOMING)[0]
    spool.record(queue_id, {0: RecipientStatus(RecipientState.DELIVERED, 1.0, 0, "2.0.0", "250 ok")})
    spool.close()
    gw.signal(signal.SIGKILL)
    gw.wait()
    gw.start()
    spool = open_test_spool(gw.config_file)
    assert spool.load(queue_id).pending_recipients() == [1]
    spool.close()
