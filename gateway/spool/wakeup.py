"""Telling the scheduler that a message is ready: a Unix datagram socket in the spool directory.

This is the role of Postfix's ``public/qmgr`` FIFO. Whoever makes a message ready (the ingress
after a 250, ``mailward queue retry|release``, a DSN being queued) sends its queue id; the
scheduler, which owns the socket, puts it in its ready queue at once. A wake-up is only a hint:
the spool directories stay the truth, the scheduler rescans ``incoming/`` at start and whenever a
hint may have been lost (the socket buffer was full, or no scheduler was running), so a lost
datagram delays a message by one scan interval and never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

SOCKET_NAME = "wakeup.sock"
_MAX_DATAGRAM = 4096
SCAN = b"scan"  # "rescan the queue directories" rather than one id


def socket_path(spool_dir: Path) -> Path:
    return spool_dir / SOCKET_NAME


class WakeSender:
    """Sends wake-ups without ever blocking: a full or absent receiver just means no hint."""

    def __init__(self, spool_dir: Path) -> None:
        self._path = str(socket_path(spool_dir))
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    def wake(self, queue_ids: Iterable[str] = ()) -> bool:
        """Send the ids (or a rescan request when there are none); False if nobody heard it."""
        ids = list(queue_ids)
        payloads = [" ".join(ids[i:i + 150]).encode() for i in range(0, len(ids), 150)] or [SCAN]
        try:
            for payload in payloads:
                self._sock.sendto(payload, self._path)
        except (BlockingIOError, FileNotFoundError, ConnectionRefusedError, OSError):
            return False
        return True

    def close(self) -> None:
        self._sock.close()


class BatchingWaker:
    """The ingress side: ids accepted in one pass of the event loop go out in one datagram, and a
    wake-up the scheduler could not take (its socket buffer was full) becomes a rescan request,
    retried until it is heard, so no message waits for the periodic rescan."""

    RETRY_DELAY = 0.05

    def __init__(self, spool_dir: Path) -> None:
        self._sender = WakeSender(spool_dir)
        self._pending: list[str] = []
        self._rescan_needed = False
        self._scheduled = False

    def add(self, queue_id: str) -> None:
        self._pending.append(queue_id)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        ids, self._pending = self._pending, []
        if self._rescan_needed:
            self._rescan_needed = not self._sender.wake()
        elif ids and not self._sender.wake(ids):
            self._rescan_needed = True
        if self._rescan_needed:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.RETRY_DELAY, self._flush)

    def close(self) -> None:
        self._sender.close()


class WakeListener(asyncio.DatagramProtocol):
    """The scheduler's end: calls `on_ids(ids)` per datagram (an empty list means "rescan")."""

    def __init__(self, on_ids: Callable[[list[str]], None]) -> None:
        self._on_ids = on_ids

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data == SCAN:
            self._on_ids([])
            return
        self._on_ids(data[:_MAX_DATAGRAM].decode("ascii", "replace").split())

    def error_received(self, exc: Exception) -> None:
        pass  # a sender went away; nothing to do on our side


async def listen(spool_dir: Path, on_ids: Callable[[list[str]], None]) -> asyncio.DatagramTransport:
    """Bind the wake-up socket (replacing a stale one left by a crash) and start listening."""
    path = socket_path(spool_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: WakeListener(on_ids), sock=sock)
    return transport
