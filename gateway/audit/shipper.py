"""Shipping this node's audit records into the cluster's copy (PostgreSQL), in order.

The local file stays the record of truth on the message path: a record is durable there before
the step it records is acknowledged, whether or not the database answers. The shipper follows the
file (woken by each write, and every second for other processes' writes) and copies complete
lines after the last seq the copy has from this node, in batches, each batch one transaction.
While the database is away the records wait in the file; the shipper tries again with backoff
and catches up in order when it is back (the copy skips records it already has, so a batch sent
twice is harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gateway import eventlog, metrics
from gateway.audit.log import log_files
from gateway.errors import StateUnavailable

log = logging.getLogger("mailward.audit")
POLL_INTERVAL = 1.0
MAX_BACKOFF = 30.0
BATCH = 1000


class Shipped(Protocol):
    seq: int
    ts: str
    event: str
    queue_id: str | None
    line: str


class AuditCopy(Protocol):
    """What the shipper needs of the cluster's copy (`state.audit_copy.PgAuditCopy`)."""

    def shipped_seq(self, node_id: str) -> int: ...

    def last_hash(self, node_id: str) -> str | None: ...

    def ship(self, node_id: str, records: Sequence[Shipped]) -> None: ...


class _Record:
    __slots__ = ("event", "line", "queue_id", "seq", "ts")

    def __init__(self, seq: int, ts: str, event: str, queue_id: str | None, line: str) -> None:
        self.seq, self.ts, self.event, self.queue_id, self.line = seq, ts, event, queue_id, line


class AuditShipper:
    def __init__(self, directory: Path, copy: AuditCopy, node_id: str) -> None:
        self.directory = directory
        self.copy = copy
        self.node_id = node_id
        self.shipped = -1  # the last seq in the copy (-1: not asked yet)
        self._position: tuple[str, int] | None = None  # (file, offset) just past `shipped`
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._first_batch = True  # checked against the copy before it is shipped
        self._local_last = 0  # the highest seq read from the local log
        self.conflict = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StateUnavailable):
            await asyncio.to_thread(self.ship_pending)  # what the last moments wrote

    async def _run(self) -> None:
        delay = POLL_INTERVAL
        while True:
            try:
                while await asyncio.to_thread(self.ship_pending):
                    pass
            except StateUnavailable as exc:
                if not self._down:
                    self._down = True
                    metrics.CLUSTER_STATE_UP.labels("postgres").set(0)
                    metrics.CLUSTER_FALLBACKS.labels("postgres").inc()
                    eventlog.event(log, "audit_shipping_waits", logging.ERROR, error=str(exc),
                                   note="records wait in the local audit log and are shipped in order later")
                delay = min(delay * 2, MAX_BACKOFF)
                await asyncio.sleep(delay)
                continue
            if self._down:
                self._down = False
                metrics.CLUSTER_STATE_UP.labels("postgres").set(1)
                eventlog.event(log, "audit_shipping_resumed", shipped_seq=self.shipped)
            delay = POLL_INTERVAL
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)

    def ship_pending(self) -> int:
        """Ship one batch of records after the copy's last; how many (blocking)."""
        if self.shipped < 0:
            self.shipped = self.copy.shipped_seq(self.node_id)
            self._position = None
        if self.conflict:
            return 0
        batch, after = self._read(BATCH)
        if not batch:
            self._position = after
            if self._first_batch and 0 < self._local_last < self.shipped:
                self._conflicting(self._local_last)  # our log ends before what the copy has from us
            return 0
        if self._first_batch:
            self._check_same_chain(batch[0])
            if self.conflict:
                return 0
        self.copy.ship(self.node_id, batch)
        self.shipped, self._position = batch[-1].seq, after
        return len(batch)

    def _check_same_chain(self, first: _Record) -> None:
        """The copy's last record from this node must be the one our next record follows: if it
        is not, another log already shipped under this node_id (a node rebuilt with the same id),
        and shipping would mix two chains. Nothing is shipped then; the admin is told."""
        self._first_batch = False
        if self.shipped == 0:
            return
        expected = self.copy.last_hash(self.node_id)
        try:
            follows = json.loads(first.line).get("prev")
        except ValueError:
            follows = None
        if first.seq != self.shipped + 1 or follows != expected:
            self._conflicting(first.seq)

    def _conflicting(self, local_seq: int) -> None:
        self.conflict = True
        eventlog.event(log, "audit_copy_conflict", logging.ERROR, node=self.node_id, shipped_seq=self.shipped,
                       local_seq=local_seq, note="the cluster copy holds another chain under this node_id: "
                       "give this node a new cluster.node_id; nothing is shipped meanwhile")

    def _read(self, limit: int) -> tuple[list[_Record], tuple[str, int] | None]:
        """Complete records after `shipped`, from the position reached (or found) in the files."""
        files = log_files(self.directory)
        names = [path.name for path in files]
        if self._position is None or self._position[0] not in names:
            self._position = self._locate(files)
        if self._position is None:
            return [], None
        found: list[_Record] = []
        file, offset = self._position
        for path in files[names.index(file):]:
            start = offset if path.name == file else 0
            with open(path, "rb") as handle:
                handle.seek(start)
                position = start
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # being written; next time
                    position += len(raw)
                    record = _parse(raw)
                    if record is None:
                        continue
                    self._local_last = max(self._local_last, record.seq)
                    if record.seq <= self.shipped:
                        continue
                    found.append(record)
                    if len(found) >= limit:
                        return found, (path.name, position)
            last = (path.name, position)
        return found, last  # past every complete line read, shipped or not

    def _locate(self, files: list[Path]) -> tuple[str, int] | None:
        """The start of the file that holds the record after `shipped`."""
        chosen = None
        for path in files:
            with open(path, "rb") as handle:
                first = _parse(handle.readline())
            if first is not None and first.seq > self.shipped + 1 and chosen is not None:
                break
            chosen = (path.name, 0)
        return chosen


def _parse(raw: bytes) -> _Record | None:
    try:
        record = json.loads(raw)
        return _Record(int(record["seq"]), str(record["ts"]), str(record["event"]),
                       record.get("queue_id"), raw.decode("utf-8").rstrip("\n"))
    except (ValueError, KeyError, TypeError):
        return None  # `audit verify` reports it; the shipper goes on
