"""How a delivery goes out: the egress pool and IP, the destination's shaping, and the marketing
stream's unsubscribe headers, in one object the delivery agent asks before each transaction.

`Route` is decided once per recipient domain: the message's pool and the shaped destination
(a `delivery.shaping` rule, or the domain itself). `admit` is asked before each transaction: it
answers with a deferral when the destination is paused after throttling, its rate budget is spent
for longer than a few seconds, or no IP of the pool may send to it today (warm-up); otherwise it
names the IP to leave from. `observe` feeds the replies back (throttling pauses the destination).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Config
from gateway.keyfiles import hex_key
from gateway.message import QueuedMessage, Reply
from gateway.reputation.bounces import classify, reputation_block
from gateway.reputation.egress import EgressIp, EgressPools, Pool, Wait
from gateway.reputation.shaping import MAX_WAIT, ShapedDestination, Shaper
from gateway.reputation.unsubscribe import UnsubscribeLinks
from gateway.resolver import Destination
from gateway.state.limits import Limits


@dataclass(frozen=True)
class Route:
    pool: Pool
    destination: ShapedDestination

    @property
    def provider(self) -> str:
        """The warm-up counter's destination: a shaping rule's name, else "other"."""
        return self.destination.name if self.destination.rule is not None else "other"

    @property
    def marketing(self) -> bool:
        return self.pool.stream == "marketing"


@dataclass(frozen=True)
class Deferral:
    reply: Reply
    retry_after: float  # seconds


def unsubscribe_links(config: Config) -> UnsubscribeLinks | None:
    """The unsubscribe links of marketing streams, when a pool is one."""
    if not any(pool.stream == "marketing" for pool in config.delivery.pools.values()):
        return None
    feedback = config.feedback
    url = feedback.unsubscribe_url or (config.portal.base_url if config.portal.enabled else None)
    return UnsubscribeLinks(hex_key(feedback.key_file, create=True), url_base=url,
                            hostname=config.hostname, local_part=feedback.unsubscribe_local_part)


class Traffic:
    def __init__(self, pools: EgressPools, shaper: Shaper, links: UnsubscribeLinks | None) -> None:
        self.pools = pools
        self.shaper = shaper
        self.links = links

    @classmethod
    def load(cls, config: Config, limits: Limits) -> Traffic:
        """From config, counting in `limits` (which outlive a reload: throttling, warm-up)."""
        return cls(EgressPools.load(config.delivery, config.hostname, limits),
                   Shaper(config.delivery.shaping, limits), unsubscribe_links(config))

    def route(self, message: QueuedMessage, domain: str, destinations: Sequence[Destination]) -> Route:
        name = message.pool or self.pools.pool_for_sender(message.envelope.sender)
        return Route(self.pools.pool(name), self.shaper.destination(domain, destinations))

    async def admit(self, route: Route, now: float) -> EgressIp | Deferral:
        """The IP for one more transaction to `route`, or why it must wait."""
        destination = route.destination
        admission = await self.shaper.admit(destination)
        if admission.paused:
            return Deferral(Reply(451, "4.7.0", f"{destination.name} asked us to slow down; paused for "
                                                f"{admission.paused:.0f}s"), admission.paused)
        if admission.wait > MAX_WAIT:
            return Deferral(Reply(451, "4.7.0", f"rate limit for {destination.name} reached"), admission.wait)
        if admission.wait:
            await asyncio.sleep(admission.wait)
        chosen = await self.pools.choose(route.pool, route.provider, now)
        if isinstance(chosen, Wait):
            return Deferral(Reply(451, "4.7.0", chosen.reason), max(1.0, chosen.until - now))
        return chosen

    async def observe(self, route: Route, replies: Sequence[Reply], now: float,
                      ip: EgressIp | None = None) -> None:
        """Throttling replies pause the destination; deliveries let it back gradually; a
        reputation block spends the warming IP's budget for this provider today."""
        if ip is not None and any(reputation_block(r.code, r.status, r.text) for r in replies):
            await self.pools.penalize(ip, route.provider, now)
        if any(classify(r.code, r.status, r.text) == "throttled" for r in replies if r.code >= 400):
            await self.shaper.throttled(route.destination)
        elif any(r.code < 300 for r in replies):
            await self.shaper.delivered(route.destination)

    def unsubscribe_headers(self, route: Route, recipient: str, sender: str) -> bytes:
        if not route.marketing or self.links is None:
            return b""
        return self.links.headers(recipient, sender.rpartition("@")[2] or self.links.hostname)
