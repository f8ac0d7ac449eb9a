"""Egress pools: which source IP (and EHLO name) a delivery leaves from, and IP warm-up.

A message belongs to one pool (chosen at ingress, see `ingress.pools`). For each connection the
pool's IPs are weighed (`weight`) among those that are active (not drained or disabled with
``mailward pool``) and under their warm-up cap for the destination provider today. An IP at its
cap either spills to another of the pool or, with ``at_cap: wait``, the delivery waits for the
next day (UTC). Without configured pools there is one implicit pool whose connections use the
system's source address and `hostname` as EHLO name.

Warm-up counts (messages per IP, provider and UTC day) are in `state.limits`: on one node in
`delivery.warmup_file`, saved at most once a second and at shutdown, so they survive a restart;
in a cluster in Redis, so a cap holds for all nodes together.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.config import DeliveryConfig
from gateway.durable import write_atomic
from gateway.state.limits import Limits, utc_day

IpState = Literal["active", "drain", "disabled"]
STATE_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class EgressIp:
    address: str | None  # None: the system picks the source address
    ehlo: str
    weight: int = 1
    schedule: tuple[int, ...] = ()  # warm-up daily caps; () for none
    start: datetime.date | None = None

    def cap(self, day: datetime.date) -> int | None:
        """Messages allowed per provider on `day`, or None for no cap."""
        if not self.schedule or self.start is None:
            return None
        index = (day - self.start).days
        if index < 0:
            return 0  # not started yet
        return self.schedule[index] if index < len(self.schedule) else None


@dataclass(frozen=True)
class Pool:
    name: str
    ips: tuple[EgressIp, ...]
    stream: str = "transactional"
    at_cap: str = "spill"


class Wait:
    """No IP of the pool may send to this provider today; try again at `until`."""

    def __init__(self, until: float, reason: str) -> None:
        self.until, self.reason = until, reason


def next_utc_midnight(now: float) -> float:
    day = utc_day(now) + datetime.timedelta(days=1)
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()


def read_ip_states(path: Path) -> dict[str, IpState]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        data = json.loads(path.read_text())
        return {str(ip): state for ip, state in data.items() if state in ("drain", "disabled")}
    return {}


def write_ip_state(path: Path, address: str, state: IpState) -> None:
    """`mailward pool drain|disable|enable IP`: the running gateway reads it within a second."""
    states = read_ip_states(path)
    if state == "active":
        states.pop(address, None)
    else:
        states[address] = state
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(states, sort_keys=True).encode())


class EgressPools:
    def __init__(self, pools: Mapping[str, Pool], default: str, sender_domains: Mapping[str, str],
                 limits: Limits, state_file: Path) -> None:
        self.pools = dict(pools)
        self.default = default
        self.sender_domains = {d.lower(): p for d, p in sender_domains.items()}
        self.limits = limits
        self.state_file = state_file
        self._states: dict[str, IpState] = {}
        self._states_checked = 0.0
        self._states_mtime = -1.0

    @classmethod
    def load(cls, config: DeliveryConfig, hostname: str, limits: Limits) -> EgressPools:
        pools = {}
        for name, pool in config.pools.items():
            ips = tuple(EgressIp(ip.address, ip.ehlo, ip.weight,
                                 config.warmup[ip.warmup].per_day if ip.warmup else (),
                                 datetime.date.fromisoformat(ip.warmup_start) if ip.warmup_start else None)
                        for ip in pool.ips)
            pools[name] = Pool(name, ips, pool.stream, pool.at_cap)
        if not pools:
            pools["default"] = Pool("default", (EgressIp(None, hostname),))
        default = config.pool_selection.default or next(iter(pools))
        return cls(pools, default, config.pool_selection.sender_domains, limits,
                   config.egress_state_file)

    def pool(self, name: str | None) -> Pool:
        return self.pools.get(name or "", self.pools[self.default])

    def pool_for_sender(self, sender: str) -> str:
        domain = sender.rpartition("@")[2].lower()
        return self.sender_domains.get(domain, self.default)

    def states(self, now: float) -> dict[str, IpState]:
        if now - self._states_checked >= STATE_CHECK_INTERVAL:
            self._states_checked = now
            try:
                mtime = os.stat(self.state_file).st_mtime
            except FileNotFoundError:
                mtime = 0.0
            if mtime != self._states_mtime:
                self._states_mtime = mtime
                self._states = read_ip_states(self.state_file)
        return self._states

    async def choose(self, pool: Pool, provider: str, now: float) -> EgressIp | Wait:
        """An IP of `pool` for one more message to `provider`, counted against its warm-up cap."""
        states = self.states(now)
        active = [ip for ip in pool.ips if ip.address is None or states.get(ip.address) is None]
        if not active:
            return Wait(now + 300, f"every IP of pool {pool.name} is drained or disabled")
        day = utc_day(now)
        if pool.at_cap == "wait":
            # Each IP keeps its own share: a message waits for its IP rather than moving.
            chosen = random.choices(active, weights=[ip.weight for ip in active])[0]  # noqa: S311 - load spreading
            if not await self._take(chosen, provider, day, now):
                return Wait(next_utc_midnight(now), f"warm-up cap of {chosen.address} for {provider} "
                                                    "reached today")
            return chosen
        candidates = list(active)
        while candidates:
            chosen = random.choices(candidates, weights=[ip.weight for ip in candidates])[0]  # noqa: S311 - load spreading
            if await self._take(chosen, provider, day, now):
                return chosen
            candidates.remove(chosen)  # at its cap: spill to another IP of the pool
        return Wait(next_utc_midnight(now), f"warm-up caps of pool {pool.name} for {provider} "
                                            "reached today")

    async def _take(self, ip: EgressIp, provider: str, day: datetime.date, now: float) -> bool:
        """Count one message against `ip`'s cap today (True when it has none)."""
        cap = ip.cap(day)
        return cap is None or await self.limits.warmup_take(str(ip.address), provider, cap, now)

    async def penalize(self, ip: EgressIp, provider: str, now: float) -> None:
        """A receiver refused `ip` for its reputation: it is done with `provider` for today
        (a warming IP only; a warm one keeps sending, the refusal is retried)."""
        cap = ip.cap(utc_day(now))
        if cap is not None:
            await self.limits.warmup_spend(str(ip.address), provider, cap, now)
