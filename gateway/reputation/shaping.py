"""Per-destination traffic shaping: connection and rate limits, and backing off when a receiver
says it is being sent too much.

A destination is a `delivery.shaping` rule (a recipient domain, a list of domains, or a provider
group matched by MX host names such as ``*.google.com``) or, without a rule, the recipient domain
itself. Limits of a rule hold across all our IPs together (and, in a cluster, across all nodes:
the counts are in `state.limits`): `max_connections` at once, `messages_per_connection`, and
`per_minute`/`per_hour` message budgets.

Any destination that answers with a throttling reply (421/451 with a rate or "try later" text,
4.7.0/4.7.28) is paused for its backoff (the rule's, else 60 s), doubled while throttling goes
on, up to an hour. After the pause its traffic is let back gradually: one connection first, and
each successful delivery halves the remaining backoff and allows one more connection.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config import ShapingRule
from gateway.resolver import Destination
from gateway.state.limits import Admission, Budget, Evict, Lease, Limits, LocalLimits

DEFAULT_BACKOFF = 60.0
MAX_WAIT = 5.0  # a rate limit that frees up within this long is waited for; else the message defers


@dataclass(frozen=True)
class ShapedDestination:
    """One destination (rule or domain) and its limits; the counts live in `Limits`."""

    name: str
    rule: ShapingRule | None
    budgets: tuple[Budget, ...] = ()

    @property
    def max_connections(self) -> int | None:
        return self.rule.max_connections if self.rule else None

    @property
    def messages_per_connection(self) -> int | None:
        return self.rule.messages_per_connection if self.rule else None


class Shaper:
    def __init__(self, rules: Mapping[str, ShapingRule], limits: Limits | None = None) -> None:
        self.rules = dict(rules)
        self.limits: Limits = limits if limits is not None else LocalLimits()
        self._by_domain = {d.lower(): name for name, rule in rules.items() for d in (name, *rule.domains)}
        self._ruled = {name: ShapedDestination(name, rule, _budgets(rule)) for name, rule in rules.items()}

    def destination(self, domain: str, destinations: Sequence[Destination]) -> ShapedDestination:
        name = self._by_domain.get(domain.lower())
        if name is None:
            hosts = [d.host.lower() for d in destinations]
            name = next((rule_name for rule_name, rule in self.rules.items()
                         if any(fnmatch.fnmatchcase(h, p.lower()) for h in hosts for p in rule.mx)), None)
        if name is not None:
            return self._ruled[name]
        return ShapedDestination(domain.lower(), None)

    async def admit(self, state: ShapedDestination) -> Admission:
        """Whether one more message may go now: paused after throttling, or its turn in the rate
        budgets (claimed only when it comes within MAX_WAIT)."""
        return await self.limits.admit(state.name, state.budgets, MAX_WAIT)

    async def connection_slot(self, state: ShapedDestination, evict: Evict) -> Lease:
        """Wait until `state` may have one more connection open, then count it. Idle cached
        connections count as open (the receiver sees them): `evict` closes those of `state`."""
        return await self.limits.connection(state.name, state.max_connections, evict)

    def release(self, lease: Lease) -> None:
        self.limits.release(lease)

    async def throttled(self, state: ShapedDestination) -> None:
        """A throttling reply: pause, and start over with one connection."""
        await self.limits.throttled(state.name, float(state.rule.backoff) if state.rule else DEFAULT_BACKOFF)

    async def delivered(self, state: ShapedDestination) -> None:
        """A delivery went through: let traffic back a step at a time."""
        await self.limits.delivered(state.name, state.max_connections)


def _budgets(rule: ShapingRule) -> tuple[Budget, ...]:
    found = []
    if rule.per_minute:
        found.append(Budget(float(rule.per_minute), 60.0))
    if rule.per_hour:
        found.append(Budget(float(rule.per_hour), 3600.0))
    return tuple(found)
