"""The durable, encrypted message spool. The directory a message is in *is* its state.

Layout under ``spool.dir``::

    incoming/ID   accepted, not yet picked up           active/ID    being processed now
    deferred/ID   waiting; the file's mtime is when the next attempt is due
    hold/ID       kept for an admin (mailward queue release|delete)
    corrupt/ID    unreadable, or crashed the process too often: kept aside, never retried
    journal/ID    per-recipient results, appended as they happen
    tmp/          scratch; anything here after a crash was never acknowledged
    incoming/.ID.tmp  a message being written; removed at start if a crash left it

Guarantees:
- `store` returns only after the message file is written, fdatasync'd, renamed to its queue id in
  ``incoming/`` and the directory fsync'd: only then may the SMTP side say 250. A crash leaves the
  message either wholly queued or as a dot-named temporary file that recovery removes.
- Every file is encrypted (see `cipher`); no body, subject or address is on disk in clear.
- Message files are never rewritten. Per-recipient results go to the journal, fsync'd before the
  caller acts on them, so after ``kill -9`` a recipient already delivered is not delivered again;
  only results in flight at the kill are lost (and redone).
- State changes are single renames, so the queue CLI may run while the gateway does: whoever
  renames first wins and the other sees the message gone from where it looked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, TypeVar

from gateway.durable import directory_sync, fsync_dir, write_new
from gateway.errors import SpoolError
from gateway.memory import LARGE
from gateway.message import QueuedMessage, RecipientState, RecipientStatus
from gateway.spool.cipher import FileCipher, SpoolKeyring

_KIND_META = b"meta"
_KIND_CONTENT = b"content"
_KIND_RESULT = b"result"
_QUEUE_ID = re.compile(r"^[0-9A-F]{13}[0-9A-F]{6}$")
_HEADER_MAX = 6 + 255 + 16
Content = bytes | tuple[bytes, ...]  # a message's bytes, whole or in parts to be concatenated
T = TypeVar("T")
FREE = "free"  # emptied files of finished messages, for new ones (see `Spool.finish`)
FREE_FILES = 10_000
_FREE_RECOUNT = 500
CRASH_LIMIT = 3  # crashes in a row while a message was active before it is quarantined


class QueueState(StrEnum):
    INCOMING = "incoming"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HOLD = "hold"
    CORRUPT = "corrupt"


def new_queue_id() -> str:
    """Time-ordered (microseconds) plus 24 random bits: unique across processes, sorts by arrival."""
    return f"{time.time_ns() // 1000:013X}{secrets.token_hex(3).upper()}"


def spool_usage(directory: Path) -> dict[QueueState, tuple[int, int, float | None]]:
    """Per state: messages, bytes on disk, and when the oldest arrived (from its queue id). Only
    lists directories, so it needs no key (`mailward status`, metrics)."""
    found: dict[QueueState, tuple[int, int, float | None]] = {}
    for state in QueueState:
        count = size = 0
        oldest: str | None = None
        try:
            entries = list(os.scandir(directory / state.value))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not is_queue_id(entry.name):
                continue
            count += 1
            with contextlib.suppress(FileNotFoundError):  # moved on meanwhile
                size += entry.stat().st_size
            oldest = entry.name if oldest is None or entry.name < oldest else oldest
        found[state] = (count, size, int(oldest[:13], 16) / 1e6 if oldest else None)
    return found


def is_queue_id(text: str) -> bool:
    return bool(_QUEUE_ID.match(text))


class Spool:
    """File-based queue; safe to share between the gateway and the CLI (see module docstring)."""

    def __init__(self, directory: Path, keyring: SpoolKeyring, *, io_threads: int = 8) -> None:
        self.directory = directory
        self.keyring = keyring
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in (*(s.value for s in QueueState), "journal", "tmp", FREE):
            (directory / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._state_directories = {state: directory / state.value for state in QueueState}
        self._free = directory / FREE
        self._free_names: list[str] = []  # files in free/ this process may take (others may too)
        self._free_lock = threading.Lock()
        self._free_skip = 0  # new files to create before free/ is listed again
        self._until_recount = 0  # finished messages before free/ is counted again
        self._free_full = False
        # Disk writes and fsyncs run here so the event loop never blocks on the disk.
        self._io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="spool-io")
        self._incoming_sync = directory_sync(directory / QueueState.INCOMING.value, self._io)
        # In the delivery process, the one writer of journals (see `track_journals`): the queue
        # ids that have one, so a message delivered at its first attempt costs no failing
        # open or unlink of a journal it never had. None elsewhere: read what is on disk.
        self._journals: set[str] | None = None
        # Due times of the messages `defer` moved, for the scheduler (`take_deferral`).
        self._deferrals: dict[str, float] = {}

    def close(self) -> None:
        self._io.shutdown(wait=True)

    async def offload(self, function: Callable[..., T], *args: object) -> T:
        """Run a blocking spool operation in the spool's I/O threads (never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    def path(self, state: QueueState, queue_id: str) -> Path:
        return self._state_directories[state] / queue_id

    # -- writing ---------------------------------------------------------------------------

    async def store(self, message: QueuedMessage, content: Content,
                    state: QueueState = QueueState.INCOMING) -> None:
        """Persist a new message in ``incoming/`` (or straight into ``hold/``, for a message
        policy holds for review); durable when this returns. `content` may be given in parts
        (our Received header and the message as it came), stored as their concatenation."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._write_new, message, content, state)
        if state is QueueState.INCOMING:
            await self._incoming_sync.add(None)
        else:
            await loop.run_in_executor(self._io, fsync_dir, self.directory / state.value)

    def store_sync(self, message: QueuedMessage, content: bytes) -> None:
        """Blocking `store`, for callers outside the event loop (CLI, recovery tools)."""
        self._write_new(message, content, QueueState.INCOMING)
        fsync_dir(self.directory / QueueState.INCOMING.value)

    def _write_new(self, message: QueuedMessage, content: Content, state: QueueState) -> None:
        cipher = FileCipher.create(self.keyring, message.queue_id)
        meta = json.dumps(message.to_dict(), separators=(",", ":")).encode()
        parts = (content,) if isinstance(content, bytes) else content
        blob: tuple[bytes, ...] | Iterator[bytes]
        if sum(len(part) for part in parts) <= LARGE:
            blob = (cipher.header, cipher.seal(_KIND_META, meta), cipher.seal(_KIND_CONTENT, b"".join(parts)))
        else:  # a large message is encrypted and written a piece at a time
            blob = itertools.chain((cipher.header, cipher.seal(_KIND_META, meta)),
                                   cipher.seal_stream(_KIND_CONTENT, parts))
        # Written under a dot-name in the target directory itself: the creation and the rename
        # then touch one directory, so one (coalesced) directory fsync makes both durable. Scans
        # skip dot-names.
        tmp = self._state_directories[state] / f".{message.queue_id}.tmp"
        try:
            write_new(tmp, blob, opened=self._recycled_file(tmp))
            os.rename(tmp, self.path(state, message.queue_id))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write queue file: {exc.strerror}") from exc

    def record(self, queue_id: str, results: Mapping[int, RecipientStatus]) -> None:
        """Append recipients' results (index -> status) to the journal; fsync'd when this returns."""
        self._journal(queue_id, [
            {"i": index, "s": status.state.value, "at": status.at, "dsn": status.dsn,
             "r": status.reply, **({"w": 1} if status.warned else {}),
             **({"p": status.protection} if status.protection else {})}
            for index, status in results.items()])

    def _journal(self, queue_id: str, entries: list[dict[str, object]]) -> None:
        path = self.directory / "journal" / queue_id
        plaintexts = [json.dumps(entry, separators=(",", ":")).encode() for entry in entries]
        try:
            if self._journals is not None and queue_id not in self._journals:
                raise FileNotFoundError(path)  # known not to exist: no failing open
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            cipher = FileCipher.create(self.keyring, queue_id)
            write_new(path, cipher.header + b"".join(cipher.seal(_KIND_RESULT, p) for p in plaintexts))
            fsync_dir(path.parent)
            if self._journals is not None:
                self._journals.add(queue_id)
            return
        try:
            cipher, _ = FileCipher.from_header(self.keyring, queue_id, _read_prefix(path))
            os.write(fd, b"".join(cipher.seal(_KIND_RESULT, p) for p in plaintexts))
            os.fdatasync(fd)
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------------------

    def locate(self, queue_id: str) -> QueueState | None:
        if not is_queue_id(queue_id):
            raise SpoolError(f"not a queue id: {queue_id!r}")
        for state in QueueState:
            if self.path(state, queue_id).exists():
                return state
        return None

    def ids(self, state: QueueState) -> list[str]:
        """Queue ids in `state`, oldest first."""
        try:
            names = os.listdir(self.directory / state.value)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if is_queue_id(name))

    def scan(self, states: tuple[QueueState, ...] = tuple(QueueState)) -> Iterator[
            tuple[QueueState, QueuedMessage]]:
        """Every readable message in `states` with its recipient statuses. Messages that move or
        disappear while scanning are skipped, which is what a live queue looks like."""
        for state in states:
            for queue_id in self.ids(state):
                try:
                    yield state, self.load(queue_id, state)
                except FileNotFoundError:
                    continue

    def load(self, queue_id: str, state: QueueState | None = None) -> QueuedMessage:
        """Metadata and recipient statuses of one message (not its content)."""
        state = state or self._require(queue_id)
        with open(self.path(state, queue_id), "rb", buffering=0) as handle:
            prefix = handle.read(_HEADER_MAX + 4)
            cipher, offset = FileCipher.from_header(self.keyring, queue_id, prefix)
            meta = _read_record(handle, prefix, offset, queue_id)
        kind, plaintext = cipher.records(meta, 0, tolerate_torn_tail=False)[0]
        if kind != _KIND_META:
            raise SpoolError(f"{queue_id}: metadata record missing")
        message = QueuedMessage.from_dict(json.loads(plaintext))
        statuses, _ = self._journal_state(queue_id, len(message.envelope.recipients))
        return message.with_statuses(statuses)

    def read(self, queue_id: str, state: QueueState, *, max_size: int | None = None
             ) -> tuple[QueuedMessage, bytes]:
        """Metadata with statuses, and content, in one read of the file (the delivery path).
        With `max_size`, a larger file is not read: `TooLarge` says its size."""
        blob = _read_file(self.path(state, queue_id), max_size)
        cipher, offset = FileCipher.from_header(self.keyring, queue_id, blob)
        records = dict(cipher.records(blob, offset, tolerate_torn_tail=False))
        if _KIND_META not in records or _KIND_CONTENT not in records:
            raise SpoolError(f"{queue_id}: metadata or content record missing")
        message = QueuedMessage.from_dict(json.loads(records[_KIND_META]))
        statuses, _ = self._journal_state(queue_id, len(message.envelope.recipients))
        return message.with_statuses(statuses), records[_KIND_CONTENT]

    def content(self, queue_id: str, state: QueueState | None = None) -> bytes:
        """The message bytes as accepted (with our Received header), decrypted."""
        state = state or self._require(queue_id)
        blob = _read_file(self.path(state, queue_id))
        cipher, offset = FileCipher.from_header(self.keyring, queue_id, blob)
        for kind, plaintext in cipher.records(blob, offset, tolerate_torn_tail=False):
            if kind == _KIND_CONTENT:
                return plaintext
        raise SpoolError(f"{queue_id}: content record missing")

    def _journal_state(self, queue_id: str, count: int) -> tuple[tuple[RecipientStatus, ...], int]:
        """Each recipient's latest status, and how many crashes in a row the message was active at
        (crash records after the last result; see `recover_active`)."""
        statuses = [RecipientStatus() for _ in range(count)]
        crashes = 0
        if self._journals is not None and queue_id not in self._journals:
            return tuple(statuses), 0
        try:
            blob = _read_file(self.directory / "journal" / queue_id)
        except FileNotFoundError:
            return tuple(statuses), 0
        cipher, offset = FileCipher.from_header(self.keyring, queue_id, blob)
        for _, plaintext in cipher.records(blob, offset, tolerate_torn_tail=True):
            entry = json.loads(plaintext)
            if "crash" in entry:
                crashes += 1
                continue
            crashes = 0
            index = entry["i"]
            if 0 <= index < count:
                previous = statuses[index]
                statuses[index] = RecipientStatus(
                    state=RecipientState(entry["s"]), at=entry["at"], dsn=entry["dsn"],
                    reply=entry["r"], attempts=previous.attempts + 1,
                    warned=previous.warned or bool(entry.get("w")), protection=entry.get("p", ""))
        return tuple(statuses), crashes

    def _require(self, queue_id: str) -> QueueState:
        state = self.locate(queue_id)
        if state is None:
            raise SpoolError(f"{queue_id}: no such message in the queue")
        return state

    # -- state changes -------------------------------------------------------------------------

    def move(self, queue_id: str, to: QueueState, *, only_from: tuple[QueueState, ...] = ()) -> QueueState:
        """Rename a message into state `to`; return the state it left. With `only_from`, refuse
        unless it is in one of those states. Durable (directory fsync'd) when this returns."""
        state = self._require(queue_id)
        if only_from and state not in only_from:
            allowed = ", ".join(s.value for s in only_from)
            raise SpoolError(f"{queue_id} is in {state.value}, not in {allowed}")
        if state is to:
            return state
        try:
            os.rename(self.path(state, queue_id), self.path(to, queue_id))
        except FileNotFoundError:
            raise SpoolError(f"{queue_id} moved while being changed; try again") from None
        fsync_dir(self.directory / to.value)
        return state

    def set_due(self, queue_id: str, state: QueueState, due: float) -> None:
        """Record when a deferred message is next due, as its file's mtime (Postfix's way)."""
        os.utime(self.path(state, queue_id), (due, due))

    def due(self, queue_id: str, state: QueueState) -> float:
        return self.path(state, queue_id).stat().st_mtime

    def claim(self, queue_id: str, state: QueueState) -> bool:
        """Move a message from `state` into ``active/`` for delivery; False if it is no longer
        there (the CLI held, deleted or requeued it). Not fsync'd: after a crash, ``active/`` is
        requeued anyway, so losing this rename changes nothing."""
        try:
            os.rename(self.path(state, queue_id), self.path(QueueState.ACTIVE, queue_id))
        except FileNotFoundError:
            return False
        return True

    def defer(self, queue_id: str, due: float) -> None:
        """``active/`` -> ``deferred/``, next attempt at `due` (the file's mtime). The results that
        made it deferred are in the fsync'd journal; if this rename is lost in a crash, the message
        is simply retried sooner."""
        os.utime(self.path(QueueState.ACTIVE, queue_id), (due, due))
        os.rename(self.path(QueueState.ACTIVE, queue_id), self.path(QueueState.DEFERRED, queue_id))
        self._deferrals[queue_id] = due

    def take_deferral(self, queue_id: str) -> float | None:
        """The due time if `defer` moved this message since the last call, else None."""
        return self._deferrals.pop(queue_id, None)

    def finish(self, queue_id: str) -> None:
        """A message whose every recipient is final: delete it and its journal. Not fsync'd: if a
        crash brings the files back, the journal (or, without one, a redelivery of what was in
        flight) decides, which is the same guarantee as before the delete. The file is emptied
        and kept in ``free/`` for a new message (see `_recycled_file`)."""
        active = self.path(QueueState.ACTIVE, queue_id)
        if self._room_to_recycle():
            try:
                os.rename(active, self._free / queue_id)  # out of the queue: deleted, as a message
                os.truncate(self._free / queue_id, 0)  # and its content gone, as by an unlink
                self._free_skip = 0
            except FileNotFoundError:
                pass
        else:
            active.unlink(missing_ok=True)
        self._drop_journal(queue_id)

    def _room_to_recycle(self) -> bool:
        """Whether free/ holds fewer than `FREE_FILES`, counted every `_FREE_RECOUNT` finished
        messages (it may go that many over)."""
        self._until_recount -= 1
        if self._until_recount <= 0:
            self._until_recount = _FREE_RECOUNT
            self._free_full = len(os.listdir(self._free)) >= FREE_FILES
        return not self._free_full

    def _recycled_file(self, path: Path) -> int | None:
        """An empty file from ``free/``, renamed to `path` and opened for writing; None when there
        is none (the caller creates one). A new file costs the file system an inode, and on ext4
        without a journal the search for one steps past every inode freed in the last minutes:
        under a steady flow of mail ~0.6 ms a file, against ~0.05 ms for a rename. Several
        processes take from ``free/``: the rename decides which one gets a file."""
        while True:
            name = self._free_name()
            if name is None:
                return None
            try:
                os.rename(self._free / name, path)
            except FileNotFoundError:  # taken by another process
                continue
            return os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)

    def _free_name(self) -> str | None:
        """The name of a file in ``free/`` to try, or None. Listed 512 at a time; found empty, it
        is listed again after 32 new files (a listing costs a few microseconds, a new inode can
        cost hundreds)."""
        with self._free_lock:  # spool I/O threads write new messages side by side
            if not self._free_names:
                if self._free_skip:  # found empty a moment ago: not listed for every message
                    self._free_skip -= 1
                    return None
                with os.scandir(self._free) as entries:
                    self._free_names = [entry.name for entry in itertools.islice(entries, 512)]
                if not self._free_names:
                    self._free_skip = 32
            return self._free_names.pop() if self._free_names else None

    def _drop_journal(self, queue_id: str) -> None:
        if self._journals is None or queue_id in self._journals:
            (self.directory / "journal" / queue_id).unlink(missing_ok=True)
            if self._journals is not None:
                self._journals.discard(queue_id)

    def track_journals(self) -> None:
        """Keep the set of journals in memory from now on. Only for the process that alone
        writes and deletes journals (the delivery process, after `recover_active`); the CLI's
        `queue delete` only removes journals of messages that are gone anyway."""
        self._journals = set(os.listdir(self.directory / "journal"))

    def remove(self, queue_id: str) -> QueueState:
        """Delete a message and its journal for good; return the state it was in."""
        state = self._require(queue_id)
        try:
            self.path(state, queue_id).unlink()
        except FileNotFoundError:
            raise SpoolError(f"{queue_id} moved while being deleted; try again") from None
        self._drop_journal(queue_id)
        fsync_dir(self.directory / state.value)
        return state

    # -- start-up ------------------------------------------------------------------------------

    def recover_writes(self) -> int:
        """Remove writes that were never acknowledged, and the files in ``free/``: after a crash a
        file system without a journal may show a name there that it also shows in the queue, and
        a free file is emptied when taken. Only while no ingress is writing."""
        with os.scandir(self._free) as entries:
            for entry in entries:
                os.unlink(entry.path)
        unfinished = 0
        for directory in (self.directory / "tmp", self.directory / QueueState.INCOMING.value,
                          self.directory / QueueState.HOLD.value):
            for name in os.listdir(directory):
                if directory.name == "tmp" or (name.startswith(".") and name.endswith(".tmp")):
                    (directory / name).unlink(missing_ok=True)
                    unfinished += 1
        return unfinished

    def recover_active(self) -> tuple[int, int, int]:
        """Requeue what was being delivered at a crash; only while no delivery runs. A message
        that was active at `CRASH_LIMIT` crashes in a row goes to ``corrupt/`` (a poison message
        must not take the gateway down forever). Returns (requeued, quarantined, orphan journals)."""
        requeued = quarantined = 0
        for queue_id in self.ids(QueueState.ACTIVE):
            self._journal(queue_id, [{"crash": 1, "at": time.time()}])
            _, crashes = self._journal_state(queue_id, 0)
            target = QueueState.CORRUPT if crashes >= CRASH_LIMIT else QueueState.INCOMING
            os.rename(self.path(QueueState.ACTIVE, queue_id), self.path(target, queue_id))
            quarantined += target is QueueState.CORRUPT
            requeued += target is QueueState.INCOMING
        if requeued or quarantined:
            fsync_dir(self.directory / QueueState.INCOMING.value)
            fsync_dir(self.directory / QueueState.CORRUPT.value)
        orphans = 0
        for queue_id in os.listdir(self.directory / "journal"):
            if is_queue_id(queue_id) and self.locate(queue_id) is None:
                (self.directory / "journal" / queue_id).unlink(missing_ok=True)
                orphans += 1
        return requeued, quarantined, orphans

    def counts(self) -> dict[QueueState, int]:
        return {state: len(self.ids(state)) for state in QueueState}

    def usage(self) -> dict[QueueState, tuple[int, int, float | None]]:
        return spool_usage(self.directory)


def _read_prefix(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as handle:
        return handle.read(_HEADER_MAX + 4)


class TooLarge(Exception):
    """The file is larger than the reader asked for (see `Spool.read`)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _read_file(path: Path, max_size: int | None = None) -> bytes:
    """The whole file. Unbuffered: a buffered open asks whether the file is a terminal (a
    failing ioctl per message) and copies the bytes once more."""
    with open(path, "rb", buffering=0) as handle:
        if max_size is not None:
            size = os.fstat(handle.fileno()).st_size
            if size > max_size:
                raise TooLarge(size)
        return handle.readall()


def _read_record(handle: BinaryIO, prefix: bytes, offset: int, queue_id: str) -> bytes:
    """The bytes of the record at `offset` (only as far as it goes: the content is not read)."""
    if len(prefix) < offset + 4:
        raise SpoolError(f"{queue_id}: truncated spool file")
    (length,) = struct.unpack_from(">I", prefix, offset)
    handle.seek(offset)
    record = handle.read(4 + length)
    if len(record) != 4 + length:
        raise SpoolError(f"{queue_id}: truncated spool file")
    return record
