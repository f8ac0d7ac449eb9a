"""The audit log on a disk that fills up under load (a real tmpfs, filled by another writer while
messages flow): every 250 has a complete, verifying `received` record, a message whose record
could not be written gets 451 and is not delivered, and nothing is delivered twice, also when
the `delivered` record could not be written at first."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from gateway.audit import reader
from tests.conftest import message, send
from tests.delivery.conftest import SENDER, MailWorld, fill
from tests.polling import eventually

ROUTES = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.11"]}


async def submit(gateway: object, marker: str) -> tuple[int, str]:
    client = gateway.client()  # type: ignore[attr-defined]
    code, text = await send(client, SENDER, ["pat@clinic.test"], message(marker))
    with contextlib.suppress(Exception):
        await client.quit()
    return code, text


async def test_a_full_audit_disk_loses_no_record_and_repeats_no_delivery(
        world: MailWorld, small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("1m")
    await world.start_dns(ROUTES)
    clinic = await world.sink("127.0.0.11")
    gateway = await world.gateway({"audit": {"dir": str(disk / "audit")}})
    answers: dict[str, tuple[int, str]] = {}

    async def wave(prefix: str, count: int) -> None:
        markers = [f"{prefix}{n:03d}" for n in range(count)]
        for start in range(0, count, 8):  # 8 sessions at a time
            batch = markers[start:start + 8]
            for marker, answer in zip(batch, await asyncio.gather(*(submit(gateway, m) for m in batch)),
                                      strict=True):
                answers[marker] = answer

    await wave("BEFORE", 24)
    filler = fill(disk)
    await wave("FULL", 24)  # the audit cannot be written now: 451, and nothing kept
    await eventually(lambda: clinic.messages, timeout=20)
    filler.unlink()
    await wave("AFTER", 24)

    accepted = {m: text.split()[-1] for m, (code, text) in answers.items() if code == 250}
    refused = {m for m, (code, _) in answers.items() if code != 250}
    assert all(answers[m][0] == 451 for m in refused)
    # A record that still fits in the audit file's last page of memory (tmpfs allocates whole
    # pages) is durable, and its 250 is right; every 250 must have its record (checked below),
    # and no more than a page's worth of records can have been written after the disk filled.
    full_accepted = {m for m in accepted if m.startswith("FULL")}
    assert len(full_accepted) <= 8
    assert len(accepted) == 48 + len(full_accepted)
    await eventually(lambda: not any(gateway.spool.counts().values()), timeout=60)
    delivered = [marker for _, marker in clinic.deliveries()]
    assert sorted(delivered) == sorted(accepted)  # each accepted message exactly once, nothing else
    directory = gateway.gateway.audit.directory
    assert directory is not None
    records = [json.loads(line) for path in sorted(directory.glob("audit-*.jsonl"))
               for line in path.read_text().splitlines()]
    received = {r["queue_id"] for r in records if r["event"] == "received"}
    delivered_ids = [r["queue_id"] for r in records if r["event"] == "delivered"]
    assert set(accepted.values()) <= received
    assert sorted(delivered_ids) == sorted(accepted.values())  # one delivered record each
    assert gateway.gateway.audit.log is not None
    result = reader.verify(directory, gateway.gateway.audit.log.key)
    assert result.problems == [], result.problems
