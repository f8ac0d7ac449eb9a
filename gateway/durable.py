"""Durable file writes: temp file, fsync, rename, fsync of the directory.

A file written here is either absent or complete after a crash, never half-written. Every caller
that must not lose data (spool, keys, users file) goes through these functions.

`DirectorySync` coalesces directory fsyncs: under load many sessions rename into the same queue
directory at once, and one fsync started after all of their renames makes every one durable, so
concurrent callers share the next fsync instead of queueing one each (group commit).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import Executor
from pathlib import Path

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def write_new(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Create `path` (which must not exist) with `content`, flushed to disk; no directory fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        # fdatasync also flushes the file size, which is all the metadata a new file needs.
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


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


class DirectorySync:
    """Group commit for one directory: ``await sync()`` returns once an fsync that started after
    the call has finished, sharing that fsync with every other caller waiting at the time."""

    def __init__(self, directory: Path, executor: Executor | None = None) -> None:
        self._directory = directory
        self._executor = executor
        self._waiting: list[asyncio.Future[None]] = []
        self._running = False

    async def sync(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._run())
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await loop.run_in_executor(self._executor, fsync_dir, self._directory)
                except OSError as exc:
                    for future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._running = False
