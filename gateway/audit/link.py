"""One audit writer per gateway: the child processes (delivery, extra ingest processes) hand their
records to the parent over a socket pair, and the parent seals and appends them with its own.

Why: with every process appending under the cross-process file lock, each one waited for the
other's fsync (the lock was held across it) and each paid its own; with one writer the records of
all processes share one group commit, and the lock is taken only by that writer (and the rare CLI
command), so it is never contended on the message path.

The guarantee is unchanged: a child's `write` returns only once the parent has fsync'd the
records, and fails (OSError) when the parent's append fails or the parent is gone, so the child
acknowledges nothing that is not durable.

Frames, both ways: 4-byte big-endian length, 4-byte request id, then the body: a JSON list of
records from the child; one status byte (0 ok, 1 failed) and a UTF-8 reason from the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from gateway import eventlog
from gateway.audit.log import AuditLog, stamped

log = logging.getLogger("mailward.audit")

FD_ENV = "MAILWARD_AUDIT_FD"
HEADER = struct.Struct(">II")
MAX_FRAME = 16 * 1024 * 1024  # a batch of records; far above any real one
OK, FAILED = b"\x00", b"\x01"


class AuditLinkServer:
    """The parent's side: serves one socket per child process, appending through `audit`."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._tasks: set[asyncio.Task[None]] = set()

    def child_socket(self) -> socket.socket:
        """A new link: the returned end is for the child (inheritable; close it after the spawn),
        the other end is served from now on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        task = asyncio.get_running_loop().create_task(self._serve(ours))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return theirs

    async def _serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    size, request = HEADER.unpack(await reader.readexactly(HEADER.size))
                    if size > MAX_FRAME:
                        raise ValueError(f"audit frame of {size} bytes")
                    records = json.loads(await reader.readexactly(size))
                    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                        raise ValueError("audit frame is not a list of records")
                except asyncio.IncompleteReadError:
                    return  # the child exited; what it sent before is committed below
                # Each request its own task: requests that arrive together share one commit.
                task = asyncio.create_task(self._commit(request, records, writer))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (ValueError, UnicodeDecodeError) as exc:
            eventlog.event(log, "audit_link_broken", logging.ERROR, error=str(exc))
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            writer.close()

    async def _commit(self, request: int, records: list[dict[str, Any]],
                      writer: asyncio.StreamWriter) -> None:
        try:
            await self.audit.write_stamped(records)
        except OSError as exc:
            reply = FAILED + (exc.strerror or str(exc)).encode()
        else:
            reply = OK
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(HEADER.pack(len(reply), request) + reply)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class RemoteAuditLog:
    """The child's side: `write` has the meaning of `AuditLog.write`, carried out by the parent."""

    def __init__(self, fd: int, directory: Path) -> None:
        self.directory = directory
        self._fd = fd
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._next = 0
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        if self._writer is not None:
            return self._writer
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # the first writers arrive together; one connection for all
            if self._writer is not None:
                return self._writer
            if self._fd < 0:
                raise OSError(errno.EPIPE, "the audit writer is gone")
            reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self._fd))
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_replies(reader))
            return writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size, request = HEADER.unpack(await reader.readexactly(HEADER.size))
                body = await reader.readexactly(min(size, MAX_FRAME))
                future = self._waiting.pop(request, None)
                if future is None or future.done():
                    continue
                if body[:1] == OK:
                    future.set_result(None)
                else:
                    future.set_exception(OSError(errno.EIO, body[1:].decode(errors="replace")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        self._fd = -1
        self._writer = None
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(OSError(errno.EPIPE, "the audit writer is gone"))

    async def write(self, *records: dict[str, Any]) -> None:
        """Append `records` durably (through the parent); returns once fsync'd."""
        if not records:
            return
        body = json.dumps(stamped(records, time.time()), separators=(",", ":")).encode()
        writer = await self._connect()
        self._next = (self._next + 1) & 0xFFFFFFFF
        request = self._next
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        try:
            writer.write(HEADER.pack(len(body), request) + body)
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.pop(request, None)
            raise OSError(errno.EPIPE, "the audit writer is gone") from exc
        await future

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
        elif self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1


def inherited_fd() -> int | None:
    """The link's descriptor a child process was started with, if any."""
    value = os.environ.get(FD_ENV, "")
    return int(value) if value.isdigit() else None
