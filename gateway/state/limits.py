"""Counters behind traffic shaping and IP warm-up: connection leases, rate budgets, throttling
backoff and daily warm-up counts, per destination name (a shaping rule, or a recipient domain).

`Limits` is what `reputation` asks; it decides nothing about which destination or IP, only
counts. `LocalLimits` keeps the counts of one node in memory (warm-up counts also in a file, so
they survive a restart); `state.redis.RedisLimits` keeps them in Redis for a cluster and falls
back to a `LocalLimits` share when Redis is away.

Throttling: a throttling reply pauses the destination for its backoff (doubled while throttling
goes on, at most an hour); afterwards one connection is allowed, and each delivery halves the
remaining backoff and allows one more connection until the rule's limit or a backoff under 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.durable import write_atomic

MAX_BACKOFF = 3600.0
SLOT_RECHECK = 1.0  # a wait for a connection slot looks again at least this often
SAVE_INTERVAL = 1.0  # warm-up counts are written at most this often (and at close)


@dataclass(frozen=True)
class Budget:
    """At most `capacity` messages per `period` seconds (a burst of `capacity` allowed)."""

    capacity: float
    period: float


@dataclass(frozen=True)
class Admission:
    """The answer to "may one more message go to this destination?"."""

    paused: float = 0.0  # > 0: throttled, paused this many more seconds
    wait: float = 0.0  # > 0: the message's turn in the rate budget comes after this many seconds


@dataclass(eq=False)
class Lease:
    """One open connection counted against a destination's limit."""

    name: str
    lease_id: str = ""  # its member in Redis's lease set ("" if not counted there)
    local: bool = False  # counted in this node's memory (on one node, or during a fallback)


Evict = Callable[[], None]  # closes this node's idle cached connections to the destination


class Limits(Protocol):
    async def admit(self, name: str, budgets: Sequence[Budget], max_wait: float) -> Admission:
        """Check the pause and claim a turn in every budget, unless the wait exceeds `max_wait`
        (then nothing is claimed)."""
        ...

    async def connection(self, name: str, limit: int | None, evict: Evict) -> Lease:
        """Wait until the destination may have one more connection (under `limit` and under the
        number allowed while recovering from throttling), then count it."""
        ...

    def release(self, lease: Lease) -> None:
        """The connection closed (from a callback: must not block)."""
        ...

    async def throttled(self, name: str, backoff: float) -> None: ...

    async def delivered(self, name: str, limit: int | None) -> None: ...

    async def warmup_take(self, ip: str, provider: str, cap: int, now: float) -> bool:
        """Count one message from `ip` to `provider` today if that stays within `cap`."""
        ...

    async def warmup_spend(self, ip: str, provider: str, cap: int, now: float) -> None:
        """`ip` is done with `provider` for today (a reputation refusal while warming)."""
        ...

    async def close(self) -> None: ...


def utc_day(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date()


@dataclass
class _Bucket:
    capacity: float
    period: float
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float, max_wait: float) -> float:
        """0 if a token was taken now; else the seconds until the claimed one is due (a claim is
        made only within `max_wait`; beyond it nothing is taken)."""
        if self.tokens < 0:
            self.tokens, self.updated = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.capacity / self.period)
        self.updated = now
        wait = 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.period / self.capacity
        if wait <= max_wait:
            self.tokens -= 1
        return wait


@dataclass
class _Destination:
    buckets: list[_Bucket] = field(default_factory=list)
    paused_until: float = 0.0
    backoff: float = 0.0  # > 0 after throttling: the current backoff, released gradually
    allowed: int | None = None  # connections allowed while recovering from throttling
    open: int = 0
    waiting: int = 0  # deliveries waiting for a connection slot
    slot_free: asyncio.Event = field(default_factory=asyncio.Event)

    def quiet(self) -> bool:
        return not (self.buckets or self.open or self.waiting or self.paused_until) and self.allowed is None


class WarmupCounts:
    """Messages per IP, provider and UTC day, in a JSON file written at most once a second."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.day = ""
        self.counts: dict[str, dict[str, int]] = {}  # ip -> provider -> messages today
        self._saved_at = 0.0
        self._dirty = False
        if path is not None:
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError, KeyError):
                data = json.loads(path.read_text())
                self.day, self.counts = str(data["day"]), {ip: dict(p) for ip, p in data["counts"].items()}

    def get(self, ip: str, provider: str, now: float) -> int:
        self._roll(now)
        return self.counts.get(ip, {}).get(provider, 0)

    def add(self, ip: str, provider: str, now: float, count: int = 1) -> None:
        self._roll(now)
        per_ip = self.counts.setdefault(ip, {})
        per_ip[provider] = per_ip.get(provider, 0) + count
        self._dirty = True
        if now - self._saved_at >= SAVE_INTERVAL:
            self.save(now)

    def _roll(self, now: float) -> None:
        today = utc_day(now).isoformat()
        if today != self.day:
            self.day, self.counts = today, {}

    def save(self, now: float | None = None) -> None:
        if not self._dirty or self.path is None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"day": self.day, "counts": self.counts}).encode())
        self._saved_at, self._dirty = now if now is not None else time.time(), False


class LocalLimits:
    """The counts of this node alone, in memory. Destinations without budgets are forgotten once
    they have no connection open and are not throttled, so memory stays bounded."""

    def __init__(self, warmup: WarmupCounts | None = None) -> None:
        self.warmup = warmup or WarmupCounts(None)
        self._destinations: dict[str, _Destination] = {}

    def _state(self, name: str) -> _Destination:
        state = self._destinations.get(name)
        if state is None:
            state = self._destinations[name] = _Destination()
        return state

    def _forget_if_quiet(self, name: str) -> None:
        state = self._destinations.get(name)
        if state is not None and state.quiet():
            del self._destinations[name]

    async def admit(self, name: str, budgets: Sequence[Budget], max_wait: float) -> Admission:
        return self.admit_now(name, budgets, max_wait, time.time())

    def admit_now(self, name: str, budgets: Sequence[Budget], max_wait: float, now: float) -> Admission:
        state = self._destinations.get(name)
        if state is not None and state.paused_until > now:
            return Admission(paused=state.paused_until - now)
        if not budgets:
            return Admission()
        if state is None:
            state = self._state(name)
        if not state.buckets:
            state.buckets = [_Bucket(b.capacity, b.period) for b in budgets]
        waits = [bucket.take(now, max_wait) for bucket in state.buckets]
        return Admission(wait=max(waits, default=0.0))

    async def connection(self, name: str, limit: int | None, evict: Evict) -> Lease:
        state = self._state(name)
        state.waiting += 1
        try:
            while (most := _smaller(limit, state.allowed)) is not None and state.open >= most:
                state.slot_free.clear()
                evict()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.slot_free.wait(), SLOT_RECHECK)
        finally:
            state.waiting -= 1
        state.open += 1
        return Lease(name, local=True)

    def adopt(self, lease: Lease) -> None:
        """Count a connection opened elsewhere (under a shared lease, before Redis went away)."""
        self._state(lease.name).open += 1
        lease.local = True

    def release(self, lease: Lease) -> None:
        state = self._destinations.get(lease.name)
        if state is None:
            return
        state.open -= 1
        state.slot_free.set()
        self._forget_if_quiet(lease.name)

    async def throttled(self, name: str, backoff: float) -> None:
        now = time.time()
        state = self._state(name)
        state.backoff = min(MAX_BACKOFF, state.backoff * 2 if state.backoff else backoff)
        state.paused_until = now + state.backoff
        state.allowed = 1

    async def delivered(self, name: str, limit: int | None) -> None:
        state = self._destinations.get(name)
        if state is None or state.allowed is None:
            return
        state.backoff /= 2
        state.allowed += 1
        if state.backoff < 1 or (limit and state.allowed >= limit):
            state.backoff, state.allowed, state.paused_until = 0.0, None, 0.0
        state.slot_free.set()
        self._forget_if_quiet(name)

    async def warmup_take(self, ip: str, provider: str, cap: int, now: float) -> bool:
        if self.warmup.get(ip, provider, now) >= cap:
            return False
        self.warmup.add(ip, provider, now)
        return True

    async def warmup_spend(self, ip: str, provider: str, cap: int, now: float) -> None:
        self.warmup.add(ip, provider, now, max(0, cap - self.warmup.get(ip, provider, now)))

    async def close(self) -> None:
        self.warmup.save()


def _smaller(a: int | None, b: int | None) -> int | None:
    limits = [n for n in (a, b) if n]
    return min(limits) if limits else None
