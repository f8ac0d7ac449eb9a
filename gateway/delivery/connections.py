"""Outbound connection limits and reuse, per destination (Postfix's connection cache and
per-destination concurrency in one place).

A delivery asks for a connection to a destination key (the recipient domain and the TLS it
requires). An idle connection to that key is reused if it has been idle less than `idle_time`;
otherwise a new one is opened, as long as the destination has fewer than `per_destination` and the
gateway fewer than `total` connections in use; else the delivery waits its turn. A connection is
closed after `max_messages` transactions, after an error, or when it has been idle too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

from gateway.delivery.client import SmtpConnection

Opener = Callable[[], Awaitable[SmtpConnection]]


class ConnectionCache:
    def __init__(self, *, total: int, per_destination: int, max_messages: int, idle_time: float) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_destination = per_destination
        self._destinations: dict[Hashable, asyncio.Semaphore] = {}
        self._idle: defaultdict[Hashable, list[SmtpConnection]] = defaultdict(list)
        self._users: Counter[Hashable] = Counter()  # deliveries using or waiting for a key
        self._max_messages = max_messages
        self._idle_time = idle_time
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by `forget_all`: older connections are not reused
        self._born: dict[SmtpConnection, int] = {}

    def forget_all(self) -> None:
        """A reload: close the idle connections now and those in use when they are given back,
        since they were opened under the old routes and TLS policy."""
        self._generation += 1
        self.evict(lambda key: True)

    def evict(self, matches: Callable[[Hashable], bool]) -> None:
        """Close the idle connections whose key `matches` (to make room under a shaping limit)."""
        for key in [k for k in self._idle if matches(k)]:
            for connection in self._idle.pop(key):
                self._close_soon(connection)

    @contextlib.asynccontextmanager
    async def connection(self, key: Hashable, opener: Opener, *, fresh: bool = False,
                         max_messages: int | None = None) -> AsyncIterator[SmtpConnection]:
        """A connection for `key` for the duration of the block (a new one with `fresh`); returned
        for reuse afterwards unless it broke. `opener`'s ConnectionFailed passes through."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle())
        slot = self._destinations.get(key)
        if slot is None:
            slot = self._destinations[key] = asyncio.Semaphore(self._per_destination)
        self._users[key] += 1
        try:
            async with slot, self._total:
                connection = None if fresh else self._take_idle(key)
                if connection is None:
                    connection = await opener()
                    self._born[connection] = self._generation
                try:
                    yield connection
                finally:
                    self._give_back(key, connection, max_messages)
        finally:
            self._users[key] -= 1

    def _take_idle(self, key: Hashable) -> SmtpConnection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have timed out
            if now - connection.last_used < self._idle_time:
                return connection
            self._close_soon(connection)
        return None

    def _give_back(self, key: Hashable, connection: SmtpConnection, max_messages: int | None = None) -> None:
        limit = min(self._max_messages, max_messages or self._max_messages)
        if connection.broken or connection.messages >= limit or \
                self._born.get(connection, self._generation) != self._generation:
            self._close_soon(connection)
        else:
            self._idle[key].append(connection)

    def _close_soon(self, connection: SmtpConnection) -> None:
        self._born.pop(connection, None)
        task = asyncio.create_task(connection.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap_idle(self) -> None:
        """Close connections idle for longer than idle_time (checked twice per interval)."""
        while True:
            await asyncio.sleep(max(self._idle_time / 2, 0.05))
            cutoff = time.monotonic() - self._idle_time
            for key, idle in list(self._idle.items()):
                keep = [c for c in idle if c.last_used >= cutoff]
                for connection in idle:
                    if connection.last_used < cutoff:
                        self._close_soon(connection)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
            for key in [k for k in self._destinations if not self._users[k] and k not in self._idle]:
                del self._destinations[key]  # forget quiet destinations: memory stays bounded
                del self._users[key]

    async def close(self) -> None:
        """QUIT every idle connection (on shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for idle in self._idle.values():
            for connection in idle:
                self._close_soon(connection)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
