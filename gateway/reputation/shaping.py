"""Per-destination traffic shaping: connection and rate limits, and backing off when a receiver
says it is being sent too much.

A destination is a `delivery.shaping` rule (a recipient domain, a list of domains, or a provider
group matched by MX host names such as ``*.google.com``) or, without a rule, the recipient domain
itself. Limits of a rule hold across all our IPs together: `max_connections` at once,
`messages_per_connection`, and `per_minute`/`per_hour` message budgets (token buckets).

Any destination that answers with a throttling reply (421/451 with a rate or "try later" text,
4.7.0/4.7.28) is paused for its backoff (the rule's, else 60 s), doubled while throttling goes
on, up to an hour. After the pause its traffic is let back gradually: one connection first, and
each successful delivery halves the remaining backoff and allows one more connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import ShapingRule
from gateway.resolver import Destination

DEFAULT_BACKOFF = 60.0
MAX_BACKOFF = 3600.0
MAX_WAIT = 5.0  # a rate limit that frees up within this long is waited for; else the message defers


@dataclass
class _Bucket:
    capacity: float
    period: float
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is free."""
        if self.tokens < 0:
            self.tokens, self.updated = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.capacity / self.period)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * self.period / self.capacity


@dataclass
class ShapedDestination:
    """The shaping state of one destination (rule or domain)."""

    name: str
    rule: ShapingRule | None
    buckets: list[_Bucket] = field(default_factory=list)
    paused_until: float = 0.0
    backoff: float = 0.0  # > 0 after throttling: the current backoff, released gradually
    allowed: int | None = None  # connections allowed while recovering from throttling
    open: int = 0
    slot_free: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def max_connections(self) -> int | None:
        limits = [n for n in (self.rule.max_connections if self.rule else None, self.allowed) if n]
        return min(limits) if limits else None

    @property
    def messages_per_connection(self) -> int | None:
        return self.rule.messages_per_connection if self.rule else None


class Shaper:
    def __init__(self, rules: Mapping[str, ShapingRule]) -> None:
        self.rules = dict(rules)
        self._by_domain = {d.lower(): name for name, rule in rules.items() for d in (name, *rule.domains)}
        self._states: dict[str, ShapedDestination] = {}

    def destination(self, domain: str, destinations: Sequence[Destination]) -> ShapedDestination:
        name = self._by_domain.get(domain.lower())
        if name is None:
            hosts = [d.host.lower() for d in destinations]
            name = next((rule_name for rule_name, rule in self.rules.items()
                         if any(fnmatch.fnmatchcase(h, p.lower()) for h in hosts for p in rule.mx)), None)
        key = name or domain.lower()
        state = self._states.get(key)
        if state is None:
            rule = self.rules.get(name) if name else None
            state = ShapedDestination(key, rule, _buckets(rule))
            if rule is not None:  # plain domains are kept only while throttled (memory stays bounded)
                self._states[key] = state
        return state

    def paused(self, state: ShapedDestination, now: float) -> float:
        """Seconds `state` is still paused after throttling (0: not paused)."""
        return max(0.0, state.paused_until - now)

    def take(self, state: ShapedDestination, now: float) -> float:
        """Claim one message from the rate budgets: 0 if sent now is fine, else seconds to wait."""
        waits = [bucket.take(now) for bucket in state.buckets]
        return max(waits, default=0.0)

    async def connection_slot(self, state: ShapedDestination, evict: Callable[[], None]) -> None:
        """Wait until `state` may have one more connection open, then count it. Idle cached
        connections count as open (the receiver sees them): `evict` closes those of `state`."""
        while state.max_connections is not None and state.open >= state.max_connections:
            state.slot_free.clear()
            evict()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.slot_free.wait(), 1.0)
        state.open += 1

    def release(self, state: ShapedDestination) -> None:
        state.open -= 1
        state.slot_free.set()

    def throttled(self, state: ShapedDestination, now: float) -> None:
        """A throttling reply: pause, and start over with one connection."""
        base = float(state.rule.backoff) if state.rule else DEFAULT_BACKOFF
        state.backoff = min(MAX_BACKOFF, state.backoff * 2 if state.backoff else base)
        state.paused_until = now + state.backoff
        state.allowed = 1
        self._states[state.name] = state

    def delivered(self, state: ShapedDestination) -> None:
        """A delivery went through: let traffic back a step at a time."""
        if state.allowed is None:
            return
        state.backoff /= 2
        state.allowed += 1
        if state.backoff < 1 or (state.rule and state.rule.max_connections
                                 and state.allowed >= state.rule.max_connections):
            state.backoff, state.allowed = 0.0, None
            if state.rule is None:
                self._states.pop(state.name, None)  # forget domains that are fine again
        state.slot_free.set()


def _buckets(rule: ShapingRule | None) -> list[_Bucket]:
    if rule is None:
        return []
    found = []
    if rule.per_minute:
        found.append(_Bucket(float(rule.per_minute), 60.0))
    if rule.per_hour:
        found.append(_Bucket(float(rule.per_hour), 3600.0))
    return found

