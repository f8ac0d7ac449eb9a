"""Limits shared by every node of a cluster, in Redis (or Valkey), with a local fallback.

Each operation is one Lua script evaluated on the Redis server, on the server's clock (`TIME`),
so nodes with skewed clocks still agree (KumoMTA's cluster throttles work the same way):

- connection leases: a sorted set per destination, member = lease id, score = deadline. A node
  renews its leases every second; those of a node that died expire after LEASE_TTL. A node that
  finds the set full marks the destination wanted, and a node holding idle cached connections to
  it closes them at its next renewal (idle connections count: the receiver sees them).
- rate budgets: GCRA (a theoretical arrival time per budget); a message claims the next free
  turn if it comes within `max_wait`, so waiting messages on different nodes never share a turn.
- throttling backoff after a 421: a hash per destination (paused until, backoff, connections
  allowed while recovering), shared by every node.
- warm-up counts: a hash per UTC day and IP, provider -> messages; incremented only under the cap.
- heartbeats: every HEARTBEAT_INTERVAL each node writes its queue sizes; a node is live while its
  last heartbeat is younger than NODE_TTL.

If Redis does not answer (connection refused, timeout) the node says so in its log and in
`mailward_cluster_state_up{store="redis"}`, and keeps sending within its share of each limit
(the limit divided by the live nodes it last saw), counted locally; once a ping succeeds again
it goes back to the shared counts (adding the warm-up messages it sent meanwhile). Fail open, on
purpose: a Redis outage must not stop mail, and a share keeps the cluster within its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import time
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis as syncredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway import eventlog, metrics
from gateway.errors import StateUnavailable
from gateway.state.limits import Admission, Budget, Evict, Lease, LocalLimits, utc_day

log = logging.getLogger("mailward.cluster")
T = TypeVar("T")

LEASE_TTL = 15.0
TEND_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 5.0
NODE_TTL = 3 * HEARTBEAT_INTERVAL
WANTED_TTL_MS = 3000
SOCKET_TIMEOUT = 1.0  # a Redis that does not answer within this is "down" for this node
POOL_SIZE = 32  # connections per process (a round trip takes well under a millisecond)
PREFIX = "mw:"

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS: throttle hash, rate keys...; ARGV: max_wait, then capacity, period per rate key.
# Returns {paused_ms, wait_ms, recovering (1 while connections are let back after throttling)}.
_ADMIT = _NOW + """
local paused = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local recovering = redis.call('HEXISTS', KEYS[1], 'allowed')
if paused > now then return {math.ceil((paused - now) * 1000), 0, recovering} end
local max_wait = tonumber(ARGV[1])
local wait, tats = 0, {}
for i = 2, #KEYS do
  local capacity, period = tonumber(ARGV[2 * i - 2]), tonumber(ARGV[2 * i - 1])
  local interval = period / capacity
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local due = tat + interval - period
  if due - now > wait then wait = due - now end
  tats[i] = {tat + interval, period}
end
if wait <= max_wait then
  for i = 2, #KEYS do
    redis.call('SET', KEYS[i], tostring(tats[i][1]), 'PX', math.ceil(tats[i][2] * 1000) + 1000)
  end
end
return {0, math.ceil(wait * 1000), recovering}
"""

# KEYS: lease set, throttle hash, wanted flag; ARGV: limit (0: none), lease id, ttl. 1 or 0.
_CONNECT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[1])
local allowed = tonumber(redis.call('HGET', KEYS[2], 'allowed') or '0')
if allowed > 0 and (limit == 0 or allowed < limit) then limit = allowed end
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
return 1
"""

# KEYS: lease sets (one per lease); ARGV: ttl, then the lease ids. Returns, per key, whether
# another node wants a slot there (KEYS[n + i] are the wanted flags).
_RENEW = _NOW + """
local ttl = tonumber(ARGV[1])
local n = #ARGV - 1
local wanted = {}
for i = 1, n do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000))
  wanted[i] = redis.call('EXISTS', KEYS[n + i])
end
return wanted
"""

# KEYS: throttle hash; ARGV: first backoff, most backoff.
_THROTTLED = _NOW + """
local backoff = tonumber(redis.call('HGET', KEYS[1], 'backoff') or '0')
if backoff > 0 then backoff = math.min(tonumber(ARGV[2]), backoff * 2) else backoff = tonumber(ARGV[1]) end
redis.call('HSET', KEYS[1], 'until', tostring(now + backoff), 'backoff', tostring(backoff), 'allowed', '1')
redis.call('PEXPIRE', KEYS[1], math.ceil((backoff + 86400) * 1000))
return 1
"""

# KEYS: throttle hash; ARGV: limit (0: none).
_DELIVERED = """
local allowed = tonumber(redis.call('HGET', KEYS[1], 'allowed') or '0')
if allowed == 0 then return 0 end
local backoff = tonumber(redis.call('HGET', KEYS[1], 'backoff') or '0') / 2
allowed = allowed + 1
local limit = tonumber(ARGV[1])
if backoff < 1 or (limit > 0 and allowed >= limit) then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'backoff', tostring(backoff), 'allowed', tostring(allowed))
end
return 1
"""

# KEYS: day hash of the IP; ARGV: provider, cap, spend (1: raise the count to the cap, else
# count one message if that stays within the cap). Returns {taken, count after}.
_WARMUP = """
local used = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local cap, count = tonumber(ARGV[2]), 1
if ARGV[3] == '1' then count = math.max(0, cap - used) end
if ARGV[3] ~= '1' and used + count > cap then return {0, used} end
redis.call('HINCRBY', KEYS[1], ARGV[1], count)
redis.call('EXPIRE', KEYS[1], 172800)
return {1, used + count}
"""


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    seen: float  # Redis server time of the last heartbeat
    queues: Mapping[str, int]
    fallback: bool  # running on its local share (Redis was away at its last heartbeat)


def _options(url: str, password: str | None, ca_file: str | None, timeout: float,
             retry: Retry | AsyncRetry) -> dict[str, Any]:
    # `retry`: one immediate retry, on a new connection. A pooled one that a restarted Redis
    # closed fails once and is replaced; a Redis that is gone fails fast (the library's default
    # backs off for seconds, which would stall deliveries instead of falling back).
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "password": password, "decode_responses": True, "retry": retry}
    if url.startswith("rediss://") and ca_file:
        options["ssl_ca_certs"] = ca_file
    return options


def connect(url: str, password: str | None = None, ca_file: str | None = None) -> aioredis.Redis:
    """A client whose pool holds at most POOL_SIZE connections: under a burst, calls wait their
    turn for one (up to SOCKET_TIMEOUT) instead of failing, which would look like Redis down."""
    options = _options(url, password, ca_file, SOCKET_TIMEOUT, AsyncRetry(NoBackoff(), 1))
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=SOCKET_TIMEOUT,
                                                    **options)
    return aioredis.Redis(connection_pool=pool, retry=options["retry"])


class RedisLimits:
    """`Limits` in Redis for a cluster of nodes; `start()` begins renewals and heartbeats."""

    def __init__(self, client: aioredis.Redis, node_id: str, local: LocalLimits, *,
                 queues: Callable[[], Mapping[str, int]] = dict) -> None:
        self.client = client
        self.node_id = node_id
        self.local = local  # the fallback (and this node's persisted warm-up file)
        self.queues = queues
        self.live_nodes = 1  # as of the last heartbeat read; the divisor of the fallback share
        self.down = False
        self._leases: dict[str, Lease] = {}  # counted in Redis, by lease id
        self._fallback_leases: set[Lease] = set()  # opened while Redis was away
        self._evicts: dict[str, Evict] = {}
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tender: asyncio.Task[None] | None = None
        self._recovering: set[str] = set()  # destinations recovering from throttling, as last seen
        self._warmup_known: dict[tuple[str, str, str], int] = {}  # last shared count seen
        self._warmup_owed: dict[tuple[str, str, str], int] = {}  # sent during the fallback
        self._admit = client.register_script(_ADMIT)
        self._connect = client.register_script(_CONNECT)
        self._renew = client.register_script(_RENEW)
        self._throttle = client.register_script(_THROTTLED)
        self._delivered = client.register_script(_DELIVERED)
        self._warmup = client.register_script(_WARMUP)
        metrics.CLUSTER_STATE_UP.labels("redis").set(1)

    def start(self) -> None:
        if self._tender is None:
            self._tender = asyncio.create_task(self._tend())

    async def _shared(self, call: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        """`call` on Redis, or `fallback` (the local share) while Redis is away."""
        if self.down:
            return await fallback()
        try:
            return await call()
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return await fallback()

    def _went_down(self, exc: BaseException) -> None:
        if self.down:
            return
        self.down = True
        # The connections open under shared leases count against this node's share from now on.
        for lease in self._leases.values():
            if not lease.local:
                self.local.adopt(lease)
                self._fallback_leases.add(lease)
        metrics.CLUSTER_STATE_UP.labels("redis").set(0)
        metrics.CLUSTER_FALLBACKS.labels("redis").inc()
        eventlog.event(log, "cluster_redis_unreachable", logging.ERROR, node=self.node_id,
                       error=type(exc).__name__, live_nodes=self.live_nodes,
                       note="sending within this node's share of each limit until Redis answers")

    def _share(self, limit: float) -> float:
        return limit / max(1, self.live_nodes)

    async def admit(self, name: str, budgets: Sequence[Budget], max_wait: float) -> Admission:
        async def shared() -> Admission:
            keys = [_key("throttle", name), *(_key("rate", name, f"{b.period:g}") for b in budgets)]
            args: list[Any] = [max_wait]
            for budget in budgets:
                args += [budget.capacity, budget.period]
            paused, wait, recovering = await self._admit(keys=keys, args=args)
            if recovering:
                self._recovering.add(name)
            else:
                self._recovering.discard(name)
            return Admission(paused=int(paused) / 1000, wait=int(wait) / 1000)

        async def fallback() -> Admission:
            shares = [Budget(max(1.0, self._share(b.capacity)), b.period) for b in budgets]
            return self.local.admit_now(name, shares, max_wait, time.time())

        return await self._shared(shared, fallback)

    async def connection(self, name: str, limit: int | None, evict: Evict) -> Lease:
        self._evicts[name] = evict
        pause = 0.02
        while True:
            if self.down:
                share = max(1, math.floor(self._share(limit))) if limit else None
                lease = await self.local.connection(name, share, evict)
                self._fallback_leases.add(lease)
                return lease
            lease = Lease(name, f"{self.node_id}:{os.getpid()}:{next(self._ids)}")
            try:
                granted = await self._connect(
                    keys=[_key("leases", name), _key("throttle", name), _key("wanted", name)],
                    args=[limit or 0, lease.lease_id, LEASE_TTL, WANTED_TTL_MS])
            except (RedisError, OSError) as exc:
                self._went_down(exc)
                continue
            if granted:
                self._leases[lease.lease_id] = lease
                return lease
            evict()  # our own idle connections first
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    def release(self, lease: Lease) -> None:
        if lease.local:
            self.local.release(lease)
            self._fallback_leases.discard(lease)
        if lease.lease_id:
            self._leases.pop(lease.lease_id, None)
            if not self.down:  # else it expires by itself
                self._spawn(self.client.zrem(_key("leases", lease.name), lease.lease_id))

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        async def quietly() -> None:
            with contextlib.suppress(RedisError, OSError):
                await coroutine
        task = asyncio.ensure_future(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def throttled(self, name: str, backoff: float) -> None:
        async def shared() -> None:
            await self._throttle(keys=[_key("throttle", name)], args=[backoff, 3600.0])
            self._recovering.add(name)

        await self._shared(shared, lambda: self.local.throttled(name, backoff))

    async def delivered(self, name: str, limit: int | None) -> None:
        if name not in self._recovering and not self.down:
            return  # not let back after throttling (as of this message's admission): nothing to count

        async def shared() -> None:
            await self._delivered(keys=[_key("throttle", name)], args=[limit or 0])

        await self._shared(shared, lambda: self.local.delivered(name, limit))

    async def warmup_take(self, ip: str, provider: str, cap: int, now: float) -> bool:
        return await self._warmup_count(ip, provider, cap, now, spend=False)

    async def warmup_spend(self, ip: str, provider: str, cap: int, now: float) -> None:
        await self._warmup_count(ip, provider, cap, now, spend=True)

    async def _warmup_count(self, ip: str, provider: str, cap: int, now: float, *, spend: bool) -> bool:
        day = utc_day(now).isoformat()
        known = (day, ip, provider)

        async def shared() -> bool:
            taken, count = await self._warmup(keys=[_key("warmup", day, ip)],
                                              args=[provider, cap, "1" if spend else "0"])
            self._warmup_known[known] = int(count)
            return bool(taken)

        async def fallback() -> bool:
            # This node's share of what was left when Redis was last seen.
            left = max(0, cap - self._warmup_known.get(known, 0))
            owed = self._warmup_owed.get(known, 0)
            if spend:
                self._warmup_owed[known] = owed + left
                return True
            if owed >= math.floor(self._share(left)):
                return False
            self._warmup_owed[known] = owed + 1
            return True

        return await self._shared(shared, fallback)

    async def _tend(self) -> None:
        """Every second: renew our leases (or, while Redis is away, try it again); every
        HEARTBEAT_INTERVAL: a heartbeat with our queue sizes."""
        last_beat = 0.0
        while True:
            try:
                if self.down:
                    await self.client.ping()
                    await self._came_back()
                await self._renew_leases()
                if time.monotonic() - last_beat >= HEARTBEAT_INTERVAL:
                    await self.beat()
                    last_beat = time.monotonic()
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            await asyncio.sleep(TEND_INTERVAL)

    async def _came_back(self) -> None:
        """Count again in Redis what this node did meanwhile: the warm-up messages it sent, and
        every connection it has open (Redis may have restarted empty, or those were opened on
        the fallback share), so the shared limits see them."""
        owed, self._warmup_owed = self._warmup_owed, {}
        today = utc_day(time.time()).isoformat()
        for lease in self._fallback_leases:
            if not lease.lease_id:
                lease.lease_id = f"{self.node_id}:{os.getpid()}:{next(self._ids)}"
                self._leases[lease.lease_id] = lease
        self._fallback_leases.clear()
        seconds, micros = await self.client.time()
        deadline = seconds + micros / 1e6 + LEASE_TTL
        async with self.client.pipeline(transaction=False) as pipe:
            for (day, ip, provider), count in owed.items():
                if day == today and count:
                    pipe.hincrby(_key("warmup", day, ip), provider, count)
            for lease in self._leases.values():
                pipe.zadd(_key("leases", lease.name), {lease.lease_id: deadline})
            await pipe.execute()
        self.down = False
        metrics.CLUSTER_STATE_UP.labels("redis").set(1)
        eventlog.event(log, "cluster_redis_back", node=self.node_id, note="limits are shared again")

    async def _renew_leases(self) -> None:
        leases = list(self._leases.values())
        if not leases:
            return
        keys = [_key("leases", lease.name) for lease in leases] + \
            [_key("wanted", lease.name) for lease in leases]
        wanted = await self._renew(keys=keys, args=[LEASE_TTL, *(lease.lease_id for lease in leases)])
        for name in {lease.name for lease, flag in zip(leases, wanted, strict=True) if flag}:
            evict = self._evicts.get(name)
            if evict is not None:
                evict()  # another node waits for a slot: give back our idle ones

    async def beat(self) -> None:
        """Say this node is alive, with its queue sizes; learn how many nodes are."""
        queues = await asyncio.to_thread(self.queues)  # a directory listing per queue state
        seconds, micros = await self.client.time()
        now = seconds + micros / 1e6
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(_key("node", self.node_id), mapping={
                "seen": now, "queues": json.dumps(dict(queues)), "fallback": int(self.down)})
            pipe.expire(_key("node", self.node_id), int(NODE_TTL * 4))
            pipe.zadd(_key("nodes"), {self.node_id: now})
            pipe.zremrangebyscore(_key("nodes"), "-inf", now - 86400)
            pipe.zcount(_key("nodes"), now - NODE_TTL, "+inf")
            results = await pipe.execute()
        self.live_nodes = max(1, int(results[-1]))

    async def close(self) -> None:
        if self._tender is not None:
            self._tender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tender
        if self._leases and not self.down:
            with contextlib.suppress(RedisError, OSError):
                async with self.client.pipeline(transaction=False) as pipe:
                    for lease in self._leases.values():
                        pipe.zrem(_key("leases", lease.name), lease.lease_id)
                    await pipe.execute()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.local.close()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose(close_connection_pool=True)


def cluster_view(url: str, password: str | None = None, ca_file: str | None = None,
                 names: Sequence[str] = ()) -> tuple[float, list[NodeStatus], dict[str, dict[str, Any]]]:
    """For `mailward cluster status`: Redis's time, the nodes seen in the last day (live or not)
    and, for each of `names` (shaping rules), the connections open and any throttling pause.
    Blocking."""
    try:
        client = syncredis.Redis.from_url(url, **_options(url, password, ca_file, 3.0, Retry(NoBackoff(), 1)))
        seconds, micros = client.time()
        now = seconds + micros / 1e6
        nodes = []
        for node_id in typing.cast(list[str], client.zrange(_key("nodes"), 0, -1)):
            fields = typing.cast(dict[str, str], client.hgetall(_key("node", node_id)))
            nodes.append(NodeStatus(node_id, float(fields.get("seen", 0)),
                                    json.loads(fields.get("queues") or "{}"), fields.get("fallback") == "1"))
        limits = {}
        for name in names:
            client.zremrangebyscore(_key("leases", name), "-inf", now)
            throttle = client.hgetall(_key("throttle", name))
            limits[name] = {"connections": client.zcard(_key("leases", name)),
                            "paused_seconds": max(0.0, float(throttle.get("until", 0)) - now),
                            "allowed_while_recovering": int(throttle["allowed"]) if "allowed" in throttle
                            else None}
        client.close()
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"Redis at {url} does not answer: {exc}") from None
    return now, [n for n in nodes if now - n.seen < 86400], limits


def warmup_counts(url: str, day: str, ips: Sequence[str], password: str | None = None,
                  ca_file: str | None = None) -> dict[str, dict[str, int]]:
    """The cluster's warm-up counts of `day` per IP and provider (for `mailward pool status`)."""
    try:
        client = syncredis.Redis.from_url(url, **_options(url, password, ca_file, 3.0, Retry(NoBackoff(), 1)))
        counts = {ip: {str(p): int(n) for p, n in typing.cast(dict[str, str], client.hgetall(
            _key("warmup", day, ip))).items()} for ip in ips}
        client.close()
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"Redis at {url} does not answer: {exc}") from None
    return counts
