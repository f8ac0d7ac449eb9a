"""The audit log's tamper evidence: a chain over daily files that `verify` proves intact, and
that names the first bad record for an edit, a deletion, a swap or a truncation."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from gateway.audit import reader
from gateway.audit.log import AuditLog, log_files, rfc3339
from tests.polling import eventually

KEY = bytes(range(32))
DAY = 86400.0
START = 1_790_000_000.0  # 2026-09-21


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def write_days(directory: Path, days: int = 3, per_day: int = 4) -> Clock:
    clock = Clock()
    audit = AuditLog(directory, KEY, clock=clock)
    for day in range(days):
        clock.now = START + day * DAY
        for i in range(per_day):
            audit.append([{"event": "received", "queue_id": f"Q{day}{i}", "sender": "dr@hospital.test"}])
    audit.close()
    return clock


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def problem(directory: Path) -> str:
    result = reader.verify(directory, KEY)
    assert result.problems, "tampering went unnoticed"
    return str(result.problems[0])


def test_an_untouched_chain_across_daily_files_verifies(tmp_path: Path) -> None:
    write_days(tmp_path)
    files = log_files(tmp_path)
    assert [f.name for f in files] == ["audit-2026-09-21.jsonl", "audit-2026-09-22.jsonl",
                                       "audit-2026-09-23.jsonl"]
    result = reader.verify(tmp_path, KEY)
    assert (result.problems, result.records, result.first_seq, result.last_seq) == ([], 12, 1, 12)
    first, second = (json.loads(line) for line in lines(files[0])[:2])
    assert first["prev"] == "0" * 64 and second["prev"] == first["hash"]
    assert json.loads(lines(files[1])[0])["prev"] == json.loads(lines(files[0])[-1])["hash"]


def test_a_flipped_byte_names_the_altered_record(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = log_files(tmp_path)[1]
    content = lines(path)
    content[2] = content[2].replace(b"dr@hospital.test", b"dr@hospital.tesT")
    path.write_bytes(b"".join(content))
    assert problem(tmp_path) == "audit-2026-09-22.jsonl:3: seq 7: hash does not match the content: " \
                                "the record was altered"


def test_a_deleted_line_names_the_record_after_the_gap(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = log_files(tmp_path)[0]
    content = lines(path)
    del content[1]
    path.write_bytes(b"".join(content))
    assert problem(tmp_path).startswith("audit-2026-09-21.jsonl:2: seq 3: follows seq 1")


def test_two_swapped_lines_are_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = log_files(tmp_path)[2]
    content = lines(path)
    content[1], content[2] = content[2], content[1]
    path.write_bytes(b"".join(content))
    assert problem(tmp_path).startswith("audit-2026-09-23.jsonl:2: seq 11: follows seq 9")


def test_a_rewritten_chain_without_the_key_fails_the_mac(tmp_path: Path) -> None:
    write_days(tmp_path, days=1)
    forger = AuditLog(tmp_path / "forged", b"not the key" * 3, clock=Clock())
    forger.append([{"event": "received", "queue_id": "Q00", "sender": "someone@else.test"}])
    forger.close()
    assert "MAC does not verify" in problem(tmp_path / "forged")


@pytest.mark.parametrize("where", ["middle file mid-line", "middle file at a line end",
                                   "last file at a line end", "last file mid-line"])
def test_a_truncated_file_is_detected(tmp_path: Path, where: str) -> None:
    write_days(tmp_path)
    files = log_files(tmp_path)
    path = files[1] if where.startswith("middle") else files[2]
    content = lines(path)
    kept = b"".join(content[:2])
    path.write_bytes(kept + (content[2][:40] if where.endswith("mid-line") else b""))
    found = problem(tmp_path)
    if where == "middle file mid-line":
        assert found.startswith("audit-2026-09-22.jsonl:3: not a complete audit record")
    elif where == "middle file at a line end":
        assert found.startswith("audit-2026-09-23.jsonl:1: seq 9: follows seq 6")
    elif where == "last file at a line end":
        assert found == "head.json: seq 10: the log ends at seq 10 but seq 12 was written: records " \
                        "were cut off the end"
    else:
        assert found.startswith("audit-2026-09-23.jsonl:3: not a complete audit record")


def test_retention_deletes_only_old_files_and_the_chain_still_verifies(tmp_path: Path) -> None:
    clock = write_days(tmp_path, days=5, per_day=2)
    audit = AuditLog(tmp_path, KEY, clock=clock)
    deleted = reader.prune(audit, retention=2 * DAY, now=clock.now)
    audit.close()
    assert deleted == ["audit-2026-09-21.jsonl", "audit-2026-09-22.jsonl"]
    assert [f.name for f in log_files(tmp_path)] == ["audit-2026-09-23.jsonl", "audit-2026-09-24.jsonl",
                                                     "audit-2026-09-25.jsonl"]
    result = reader.verify(tmp_path, KEY)
    assert result.problems == [] and result.first_seq == 5
    # Removing the oldest kept file by hand is not retention: the anchor no longer fits.
    log_files(tmp_path)[0].unlink()
    assert "no retention record vouches for this start" in problem(tmp_path)


def test_two_writers_share_one_chain(tmp_path: Path) -> None:
    clock = Clock()
    ingest, delivery = AuditLog(tmp_path, KEY, clock=clock), AuditLog(tmp_path, KEY, clock=clock)
    for i in range(20):
        (ingest if i % 3 else delivery).append([{"event": "received", "queue_id": f"Q{i}"}])
    ingest.close()
    delivery.close()
    result = reader.verify(tmp_path, KEY)
    assert result.problems == [] and result.last_seq == 20


def test_a_partial_last_line_from_a_crash_is_cut_off_by_the_next_writer(tmp_path: Path) -> None:
    clock = write_days(tmp_path, days=1)
    path = log_files(tmp_path)[0]
    with open(path, "ab") as handle:
        handle.write(b'{"seq":5,"ts":"2026-09-21T')  # the process died here, before fsync and 250
    audit = AuditLog(tmp_path, KEY, clock=clock)
    audit.append([{"event": "received", "queue_id": "after"}])
    audit.close()
    result = reader.verify(tmp_path, KEY)
    assert result.problems == [] and result.last_seq == 5


async def test_concurrent_writes_are_group_committed_in_order(tmp_path: Path) -> None:
    import asyncio

    audit = AuditLog(tmp_path, KEY)
    await asyncio.gather(*(audit.write({"event": "received", "queue_id": f"Q{i}"}) for i in range(200)))
    audit.close()
    records = [json.loads(line) for line in lines(log_files(tmp_path)[0])]
    assert [r["seq"] for r in records] == list(range(1, 201))
    assert reader.verify(tmp_path, KEY).problems == []
    assert os.stat(log_files(tmp_path)[0]).st_mode & 0o777 == 0o600


async def test_a_log_cut_after_a_burst_is_noticed_once_the_writer_has_been_idle(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, KEY)
    try:
        for i in range(40):  # a burst: all within the head's one-second interval
            await audit.write({"event": "received", "queue_id": f"B{i}", "sender": "dr@hospital.test"})

        def head_seq() -> int:
            return int(json.loads((tmp_path / "head.json").read_text())["seq"])

        await eventually(lambda: head_seq() == 40, timeout=5)  # the trailing head write, no close
        [path] = log_files(tmp_path)
        path.write_bytes(b"".join(lines(path)[:-12]))  # cut the last 12 records at a line boundary
        assert "the log ends at seq 28 but seq 40 was written" in problem(tmp_path)
    finally:
        audit.close()


@pytest.mark.parametrize("timestamp", [1764547200.0, 1764547200.0005, 1764547200.9994, 1764547200.9999996,
                                       1764633599.9999, 1798761599.999, 1764547261.123456])
def test_record_timestamps_are_what_datetime_writes(timestamp: float) -> None:
    """The date part is formatted once per second: the same text as datetime's, milliseconds and
    the carry into the next second (of a day, of a year) included."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    assert rfc3339(timestamp) == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
