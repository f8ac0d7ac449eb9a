"""The queue manager (Postfix's qmgr role): decides which message is delivered when.

It keeps an in-memory index, rebuilt from the spool at start: a FIFO of ready ids (``incoming/``)
and a heap of deferred ids by due time (each file's mtime, read with one ``stat`` and no
decryption). It never polls every file: it sleeps until the earliest due time or a wake-up
(the ingress after a 250, a DSN, ``mailward queue retry|release`` through `wakeup`), and rescans
``incoming/`` every `SCAN_INTERVAL` in case a wake-up was lost.

At most `max_active` messages are in delivery at once; the rest wait in the spool, however many
there are. A message is claimed by renaming it into ``active/``, which is also what makes the CLI
safe to use meanwhile: a message the CLI held or deleted simply fails to be claimed and is
dropped from the index. The heap may hold stale entries (a message retried by the CLI); they are
skipped when they come due.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from gateway import eventlog
from gateway.errors import RetrySoon, SpoolError
from gateway.spool import wakeup
from gateway.spool.store import QueueState, Spool

log = logging.getLogger("mailward.qmgr")

SCAN_INTERVAL = 30.0  # seconds between safety rescans of incoming/
FAILURE_RETRY = 300.0  # a delivery that failed in our own code is retried after this


class Scheduler:
    def __init__(self, spool: Spool, deliver: Callable[[str], Awaitable[None]], *, max_active: int) -> None:
        self.spool = spool
        self._deliver = deliver
        self.max_active = max_active
        self._ready: deque[tuple[str, QueueState]] = deque()
        self._ready_ids: set[str] = set()
        self._deferred: list[tuple[float, str]] = []  # heap of (due, queue id)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._wake_socket: asyncio.DatagramTransport | None = None
        self._next_scan = 0.0

    # -- what others call ------------------------------------------------------------------------

    def notify(self, queue_ids: Iterable[str]) -> None:
        """Messages are ready in ``incoming/`` (an empty list: rescan the directories)."""
        ids = list(queue_ids)
        if not ids:
            self._next_scan = 0.0
        for queue_id in ids:
            self._add_ready(queue_id, QueueState.INCOMING)
        self._wake.set()

    async def start(self) -> None:
        self._scan_incoming()
        for queue_id in self.spool.ids(QueueState.DEFERRED):
            try:
                heapq.heappush(self._deferred, (self.spool.due(queue_id, QueueState.DEFERRED), queue_id))
            except FileNotFoundError:
                continue
        try:
            self._wake_socket = await wakeup.listen(self.spool.directory, self.notify)
        except OSError as exc:  # e.g. a spool path too long for a Unix socket: rescans still work
            eventlog.event(log, "wakeup_socket_unavailable", logging.WARNING, error=exc.strerror)
        eventlog.event(log, "scheduler_started", ready=len(self._ready), deferred=len(self._deferred))
        self._runner = asyncio.create_task(self._run())

    async def stop(self, timeout: float) -> None:
        """Stop starting deliveries; give running ones `timeout` seconds, then cancel them (a
        cancelled delivery puts its message back in ``incoming/``)."""
        self._stopping = True
        self._wake.set()
        if self._wake_socket is not None:
            self._wake_socket.close()
        if self._runner is not None:
            await self._runner
        if self._active:
            _, unfinished = await asyncio.wait(list(self._active.values()), timeout=timeout)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
        eventlog.event(log, "scheduler_stopped", cancelled=len(self._active))

    @property
    def active(self) -> int:
        return len(self._active)

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            now = time.time()
            if time.monotonic() >= self._next_scan:
                self._scan_incoming()
            while self._deferred and self._deferred[0][0] <= now:
                _, queue_id = heapq.heappop(self._deferred)
                self._add_ready(queue_id, QueueState.DEFERRED)
            while self._ready and len(self._active) < self.max_active:
                queue_id, state = self._ready.popleft()
                self._ready_ids.discard(queue_id)
                # A rename without fsync: a metadata change in memory, cheap enough for the loop.
                if self.spool.claim(queue_id, state):
                    self._active[queue_id] = asyncio.create_task(self._delivery(queue_id))
            self._wake.clear()
            timeout = min(self._next_scan - time.monotonic(),
                          self._deferred[0][0] - time.time() if self._deferred else SCAN_INTERVAL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))

    def _add_ready(self, queue_id: str, state: QueueState) -> None:
        if queue_id not in self._ready_ids and queue_id not in self._active:
            self._ready.append((queue_id, state))
            self._ready_ids.add(queue_id)

    def _scan_incoming(self) -> None:
        for queue_id in self.spool.ids(QueueState.INCOMING):
            self._add_ready(queue_id, QueueState.INCOMING)
        self._next_scan = time.monotonic() + SCAN_INTERVAL

    async def _delivery(self, queue_id: str) -> None:
        try:
            await self._deliver(queue_id)
        except asyncio.CancelledError:
            # Shutting down mid-delivery: back to incoming/ (no crash counted); what was sent in
            # the meantime is in the journal, or is redelivered as "in flight".
            await self.spool.offload(self._move_from_active, queue_id, QueueState.INCOMING)
            raise
        except SpoolError as exc:
            eventlog.event(log, "unreadable_message", logging.ERROR, queue_id=queue_id, error=str(exc))
            await self.spool.offload(self._move_from_active, queue_id, QueueState.CORRUPT)
        except RetrySoon as exc:
            await self.spool.offload(self._defer_after_failure, queue_id, exc.after)
        except Exception as exc:  # fail closed: keep the message, retry later, say why
            eventlog.event(log, "delivery_failed", logging.ERROR, queue_id=queue_id,
                           error=f"{type(exc).__name__}: {exc}")
            log.debug("delivery failure", exc_info=True)
            await self.spool.offload(self._defer_after_failure, queue_id)
        finally:
            self._active.pop(queue_id, None)
            self._wake.set()
        self._track_deferred(queue_id)

    def _track_deferred(self, queue_id: str) -> None:
        # The spool says whether this delivery deferred it (no stat of a file that is usually gone).
        due = self.spool.take_deferral(queue_id)
        if due is not None:
            heapq.heappush(self._deferred, (due, queue_id))

    def _move_from_active(self, queue_id: str, to: QueueState) -> None:
        if self.spool.path(QueueState.ACTIVE, queue_id).exists():  # the delivery may have settled it
            self.spool.move(queue_id, to, only_from=(QueueState.ACTIVE,))

    def _defer_after_failure(self, queue_id: str, after: float = FAILURE_RETRY) -> None:
        if self.spool.path(QueueState.ACTIVE, queue_id).exists():
            self.spool.defer(queue_id, time.time() + after)
