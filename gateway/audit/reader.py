"""Reading the audit log: `verify` (the whole chain and the head), `search` and `export` with a
summary for compliance reports, and `prune` for retention. The CLI's ``mailward audit`` calls these;
they only read, except `prune`, which deletes whole files past retention and then appends the
anchor record that lets the shorter chain still verify."""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.chain import ChainState, Located, Problem, verify_records
from gateway.audit.log import HEAD_FILE, AuditLog, file_day, head_mac, log_files

CSV_FIELDS = ("seq", "ts", "event", "queue_id", "message_id", "sender", "recipient", "recipients",
              "protection", "reason", "mx", "ip", "egress_ip", "tls", "code", "status", "action",
              "rules", "user", "portal_id", "client", "auth", "node")


def located(directory: Path) -> Iterator[Located]:
    for path in log_files(directory):
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                yield Located(path.name, number, raw)


@dataclass
class Verification:
    records: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)


def verify_lines(name: str, lines: Iterable[tuple[int, str]], key: bytes) -> Verification:
    """Verify a chain given as (seq, line) pairs, e.g. one node's records in the cluster's copy
    (each located as NAME:SEQ)."""
    state = ChainState()
    located_lines = (Located(name, seq, line.encode("utf-8")) for seq, line in lines)
    problems = list(verify_records(located_lines, key, state))
    return Verification(state.records, state.first_seq, state.seq, 0, problems)


def verify(directory: Path, key: bytes) -> Verification:
    state = ChainState()
    problems = list(verify_records(located(directory), key, state))
    result = Verification(state.records, state.first_seq, state.seq, len(log_files(directory)), problems)
    if not problems:
        result.problems += _check_head(directory, key, state)
    return result


def _check_head(directory: Path, key: bytes, state: ChainState) -> list[Problem]:
    """The head names a record the writers reached; the log must still reach it, unchanged."""
    path = directory / HEAD_FILE
    if not path.exists():
        return []
    try:
        head = json.loads(path.read_bytes())
        seq, digest, mac = int(head["seq"]), str(head["hash"]), str(head["mac"])
    except (ValueError, KeyError, TypeError):
        return [Problem(HEAD_FILE, None, "unreadable head record")]
    if mac != head_mac(key, seq, digest):
        return [Problem(HEAD_FILE, None, "the head record's MAC does not verify")]
    if state.seq < seq:
        return [Problem(HEAD_FILE, state.seq, f"the log ends at seq {state.seq} but seq {seq} was "
                                              "written: records were cut off the end")]
    if state.seq == seq and state.hash != digest:
        return [Problem(HEAD_FILE, seq, "the last record differs from the one written")]
    return []


@dataclass(frozen=True)
class Query:
    queue_id: str | None = None
    message_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def day_range(self) -> tuple[datetime.date | None, datetime.date | None]:
        return (self.since.date() if self.since else None, self.until.date() if self.until else None)


def _in_time(record: dict[str, Any], query: Query) -> bool:
    if query.since is None and query.until is None:
        return True
    moment = datetime.datetime.fromisoformat(str(record.get("ts", "")).replace("Z", "+00:00"))
    return (query.since is None or moment >= query.since) and (query.until is None or moment < query.until)


def _records(directory: Path, query: Query) -> Iterator[dict[str, Any]]:
    first, last = query.day_range()
    for path in log_files(directory):
        day = file_day(path.name)
        assert day is not None
        # A record's file is the day it was written, which can trail its ts by a moment.
        slack = datetime.timedelta(days=1)
        if (first and day < first - slack) or (last and day > last + slack):
            continue
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # `verify` reports it; a search shows what is readable
                yield record


def _addresses(record: dict[str, Any]) -> list[str]:
    found = [str(record.get(key, "")) for key in ("sender", "recipient")]
    found += [str(r) for r in record.get("recipients", []) or []]
    return [a.lower() for a in found if a]


def search(directory: Path, query: Query) -> list[dict[str, Any]]:
    """Records matching every given criterion; a message id or address selects whole messages
    (every record of the queue ids it appears with)."""
    return select(_records(directory, query), query)


def select(found: Iterable[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    """`search` over records from anywhere (this node's files, or the cluster's copy)."""
    records = [r for r in found if _in_time(r, query)]
    if query.message_id or query.sender or query.recipient:
        queue_ids = {r.get("queue_id") for r in records
                     if (not query.message_id or r.get("message_id") == query.message_id)
                     and (not query.sender or str(r.get("sender", "")).lower() == query.sender.lower())
                     and (not query.recipient or query.recipient.lower() in _addresses(r))}
        queue_ids.discard(None)
        records = [r for r in records if r.get("queue_id") in queue_ids]
    if query.queue_id:
        records = [r for r in records if r.get("queue_id") == query.queue_id]
    return records


def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts for a compliance report: messages received, final results per recipient, and the
    protection of delivered recipients."""
    results = Counter(str(r["event"]) for r in records
                      if r.get("event") in ("delivered", "bounced", "expired", "deferred"))
    protection = Counter(str(r.get("protection") or "none") for r in records if r.get("event") == "delivered")
    return {"messages_received": sum(r.get("event") == "received" for r in records),
            "results": dict(sorted(results.items())), "protection": dict(sorted(protection.items())),
            "records": len(records)}


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: ";".join(map(str, value)) if isinstance(value, list)
                         else json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
                         for key, value in record.items()})
    return out.getvalue()


def prune(audit: AuditLog, retention: float, now: float) -> list[str]:
    """Delete whole files older than `retention` (by their day) and append the anchor record
    for the new first record. The newest file is never deleted."""
    cutoff = datetime.datetime.fromtimestamp(now - retention, datetime.UTC).date()
    files = log_files(audit.directory)
    doomed = [p for p in files[:-1] if (file_day(p.name) or cutoff) < cutoff]
    if not doomed:
        return []
    kept = files[len(doomed)]
    with open(kept, "rb") as handle:
        first = json.loads(handle.readline())
    # The anchor first: a crash before the deletions leaves an anchor that is not needed yet,
    # never a shortened chain without one.
    audit.append([{"event": "retention", "queue_id": None, "deleted": [p.name for p in doomed],
                   "first_file": kept.name, "first_seq": first["seq"], "first_prev": first["prev"]}])
    for path in doomed:
        path.unlink()
    return [p.name for p in doomed]
