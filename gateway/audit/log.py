"""The audit log on disk: append-only daily JSON Lines files in `audit.dir`, one hash chain across
them. The gateway's main process is its one writer on the message path (its child processes send
their records to it, see `link`); CLI commands append too, under the same lock.

Durability: `write` returns once the records are written and fsync'd. Callers await it before
the step it records becomes visible (the 250 to the client, a message leaving the spool), so an
acknowledged event is never lost. Writers in one process share one fsync (group commit); the
file lock (`flock` on ``.lock``) orders writers across processes, and each writer re-reads the
chain's tail when another process appended since its last write.

A failed append (a full disk) is cut back off the file and raised, so the caller does not
acknowledge what it records. A crash can leave a partial last line (never acknowledged): the next
writer cuts it off. The
head file (``head.json``: the latest seq and hash, MAC'd) lets `verify` notice a log cut short at
a line boundary. It is rewritten at most once a second while records flow, and once more a second
after the last of a burst (a trailing write), and at close: a cut older than a second is seen.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway import eventlog
from gateway.audit.chain import GENESIS, seal
from gateway.durable import GroupCommit, fsync_dir, write_all, write_atomic

log = logging.getLogger("mailward.audit")

FILE_PREFIX, FILE_SUFFIX = "audit-", ".jsonl"
HEAD_FILE = "head.json"
HEAD_INTERVAL = 1.0
TAIL_STEP = 16 * 1024  # first read back from the end; records are far smaller


def file_name(day: datetime.date) -> str:
    return f"{FILE_PREFIX}{day.isoformat()}{FILE_SUFFIX}"


def file_day(name: str) -> datetime.date | None:
    if not (name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX)):
        return None
    try:
        return datetime.date.fromisoformat(name[len(FILE_PREFIX):-len(FILE_SUFFIX)])
    except ValueError:
        return None


def log_files(directory: Path) -> list[Path]:
    """The audit files, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if file_day(p.name) is not None)


def rfc3339(timestamp: float) -> str:
    fraction, second = math.modf(timestamp)
    micro = round(fraction * 1_000_000)  # as datetime rounds it
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    return _second_text(int(second)) + f"{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def _second_text(second: int) -> str:
    """The date and time to the second: formatted once per second, not once per record."""
    return datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def stamped(records: tuple[dict[str, Any], ...], timestamp: float) -> list[dict[str, Any]]:
    """`records` with their `ts`: the moment they were handed to be written."""
    ts = rfc3339(timestamp)
    return [{"ts": ts, **record} for record in records]


def head_mac(key: bytes, seq: int, digest: str) -> str:
    return hmac.new(key, f"head:{seq}:{digest}".encode(), hashlib.sha256).hexdigest()


class AuditLog:
    def __init__(self, directory: Path, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.key = key
        self.clock = clock
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # The tail as this process last left it; compared with the file under the lock.
        self._file: Path | None = None
        self._size = -1
        self._seq = 0
        self._hash = GENESIS
        self._head_written = 0.0
        self._head_timer: threading.Timer | None = None  # the trailing head write, when one is due
        # One thread appends, in order; writers waiting meanwhile share its next append and fsync.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit")
        self._commits: GroupCommit[list[dict[str, Any]]] = GroupCommit(
            lambda batch: self.append([record for records in batch for record in records]), self._executor)

    # -- writing --------------------------------------------------------------------------------

    async def write(self, *records: dict[str, Any]) -> None:
        """Append `records` (event fields; ts is set now) durably; returns once fsync'd."""
        if records:
            await self._commits.add(stamped(records, self.clock()))

    async def write_stamped(self, records: list[dict[str, Any]]) -> None:
        """`write` for records that carry their `ts` (another process's, through the audit link)."""
        if records:
            await self._commits.add(records)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Seal and append `records` now (blocking: a thread, or the CLI)."""
        with self._locked():
            today = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).date()
            path = self.directory / file_name(today)
            self._sync_tail(path)
            before = (self._seq, self._hash)
            data = bytearray()
            for record in records:
                record.setdefault("ts", rfc3339(self.clock()))
                self._seq += 1
                self._hash, sealed = seal({"seq": self._seq, **record, "prev": self._hash}, self.key)
                data += sealed
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                self._append(fd, data, before)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.directory)
            self._file = path
            if self.clock() - self._head_written >= HEAD_INTERVAL:
                try:
                    self._write_head()
                except OSError as exc:  # the records are durable; the head catches up next time
                    eventlog.event(log, "audit_head_not_written", logging.WARNING, error=exc.strerror)
            elif self._head_timer is None:
                self._head_timer = threading.Timer(HEAD_INTERVAL, self._trailing_head)
                self._head_timer.daemon = True
                self._head_timer.start()

    def _trailing_head(self) -> None:
        """The head after a burst: run in the writer thread, so it is ordered with appends."""
        with contextlib.suppress(RuntimeError):  # closing: close() writes the head itself
            self._executor.submit(self._flush_head)

    def _flush_head(self) -> None:
        self._head_timer = None
        with contextlib.suppress(OSError), self._locked():
            self._sync_tail(self._file or self.directory / "none")
            self._write_head()

    def _append(self, fd: int, data: bytes | bytearray, before: tuple[int, str]) -> None:
        """Append `data` whole and fsync it, or leave the file as it was and raise: a record
        half on disk (a full disk) must neither be acknowledged nor stay for the next writer to
        chain onto."""
        start = os.fstat(fd).st_size
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            self._seq, self._hash = before
            self._size = -1  # re-read the tail next time, whatever is on disk now
            raise
        self._size = os.fstat(fd).st_size

    def _write_head(self) -> None:
        head = {"seq": self._seq, "hash": self._hash, "mac": head_mac(self.key, self._seq, self._hash)}
        write_atomic(self.directory / HEAD_FILE, json.dumps(head).encode(), mode=0o600)
        self._head_written = self.clock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sync_tail(self, path: Path) -> None:
        """Make (seq, hash) the chain's real tail: another process may have appended, or a crash
        left a partial line. Cheap when nothing changed: one stat."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if path == self._file and size == self._size:
            return
        files = log_files(self.directory)
        for candidate in reversed(files):
            last = self._last_line(candidate)
            if last is not None:
                record = json.loads(last)
                self._seq, self._hash = int(record["seq"]), str(record["hash"])
                break
        else:
            self._seq, self._hash = 0, GENESIS
        self._file, self._size = path, size

    def _last_line(self, path: Path) -> bytes | None:
        """The last complete line of `path`; a partial line after it (a crash mid-write, never
        acknowledged) is cut off. Reads backwards in growing steps: records are small."""
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            step = TAIL_STEP
            while True:
                start = max(0, size - step)
                handle.seek(start)
                tail = handle.read(size - start)
                end = tail.rfind(b"\n")
                if end >= 0 and end + 1 < len(tail):  # a partial line after the last newline
                    handle.truncate(start + end + 1)
                    os.fsync(handle.fileno())
                    eventlog.event(log, "audit_partial_line_removed", logging.WARNING, file=path.name,
                                   bytes=len(tail) - end - 1)
                    size, tail = start + end + 1, tail[:end + 1]
                    continue
                if end < 0 and start > 0:
                    step *= 4
                    continue
                if end < 0:  # nothing but a partial line, or an empty file
                    if tail:
                        handle.truncate(0)
                        os.fsync(handle.fileno())
                    return None
                begin = tail.rfind(b"\n", 0, end) + 1
                if begin == 0 and start > 0:
                    step *= 4  # the whole last line is not in this window yet
                    continue
                return tail[begin:end]

    def close(self) -> None:
        if self._lock_fd < 0:
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._executor.shutdown(wait=True)  # appends still queued go first, then the last head
        if self._seq:
            with contextlib.suppress(OSError), self._locked():
                self._sync_tail(self._file or self.directory / "none")
                self._write_head()
        os.close(self._lock_fd)
        self._lock_fd = -1
