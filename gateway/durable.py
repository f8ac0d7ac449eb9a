"""Durable file writes: temp file, fsync, rename, fsync of the directory.

A file written here is either absent or complete after a crash, never half-written. Every caller
that must not lose data (spool, keys, users file) goes through these functions.

`GroupCommit` coalesces fsyncs: under load many sessions rename into the same queue directory (or
append to the audit log) at once, and one fsync started after all of their writes makes every one
durable, so concurrent callers share the next fsync instead of queueing one each.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Generic, TypeVar

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
T = TypeVar("T")


def write_new(path: Path, content: bytes | Sequence[bytes] | Iterator[bytes], mode: int = 0o600,
              *, opened: int | None = None) -> None:
    """Create `path` (which must not exist) with `content`, flushed to disk; no directory fsync.
    `content` may be a sequence of buffers (written with one writev: no joined copy), or an
    iterator of them, each written as it comes (a large file through little memory). `opened`:
    a descriptor of `path` the caller has made empty and writable (a recycled file), used instead
    of creating it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = opened if opened is not None else os.open(path, flags, mode)
    try:
        if isinstance(content, bytes):
            write_all(fd, content)
        elif isinstance(content, (list, tuple)):
            write_parts(fd, content)
        else:
            for part in content:
                write_all(fd, part)
        # fdatasync also flushes the file size, which is all the metadata a new file needs.
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_all(fd: int, content: bytes | bytearray | memoryview) -> None:
    """Write every byte: `os.write` may write fewer than asked (a full disk, a signal), and
    then reports the error only on the next call, which this makes."""
    view = memoryview(content)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def write_parts(fd: int, parts: Sequence[bytes]) -> None:
    """Write the buffers in order: one writev for all of them, the rest (if it fell short) one
    by one."""
    written = os.writev(fd, parts)
    for part in parts:
        if written >= len(part):
            written -= len(part)
            continue
        write_all(fd, memoryview(part)[written:])
        written = 0


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `content` atomically and durably (temp file in the same directory)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    write_new(tmp, content, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class GroupCommit(Generic[T]):
    """Group commit: ``await add(item)`` returns once `commit` has run, in the executor, on a
    batch that holds the item. Callers that arrive while a commit runs share the next one, so
    under load one fsync serves many of them instead of each queueing its own. A failed commit
    fails every caller in its batch."""

    def __init__(self, commit: Callable[[list[T]], object], executor: Executor | None = None) -> None:
        self._commit = commit
        self._executor = executor
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run())
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await loop.run_in_executor(self._executor, self._commit, [item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._running = None


def directory_sync(directory: Path, executor: Executor | None = None) -> GroupCommit[None]:
    """Group commit of fsyncs of one directory: ``await sync.add(None)`` returns once an fsync
    that started after the call has finished."""
    return GroupCommit(lambda _batch: fsync_dir(directory), executor)
