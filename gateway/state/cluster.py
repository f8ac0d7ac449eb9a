"""Which implementation of each kind of state a process uses, from `cluster:` in the config.

Without `cluster` (or without its `redis`/`postgres` URL) everything stays on this node, as
files and SQLite. With them, limits and counters go to Redis and durable lists to PostgreSQL.
The app builds one `SharedState` per process and hands its parts down; nothing below asks the
config which backend is in use.

The Redis and PostgreSQL drivers are imported only when `cluster:` names them: a node on its
own does not carry them (some 10 MB in each of its processes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway import eventlog, metrics
from gateway.config import ClusterConfig, Config
from gateway.errors import StateUnavailable
from gateway.keyfiles import read_secret
from gateway.state.limits import Limits, LocalLimits, WarmupCounts, utc_day
from gateway.state.portal import PasswordHashes, PortalRecords
from gateway.state.suppression import LocalSuppression, Suppression

if TYPE_CHECKING:
    from gateway.state.audit_copy import PgAuditCopy
    from gateway.state.postgres import Database, PgApiTokens, PgLease

log = logging.getLogger("mailward.cluster")


def _password(path: Any) -> str | None:
    return read_secret(path).decode("utf-8").strip() if path is not None else None


def _ca(cluster: ClusterConfig) -> str | None:
    return str(cluster.ca_file) if cluster.ca_file is not None else None


def open_database(config: Config) -> Database | None:
    """The cluster's PostgreSQL pool, or None without `cluster.postgres`."""
    cluster = config.cluster
    if cluster.postgres is None:
        return None
    from gateway.state.postgres import Database
    return Database(cluster.postgres, password=_password(cluster.postgres_password_file),
                    ca_file=_ca(cluster))


def open_suppression(config: Config, database: Database | None) -> Suppression:
    if database is not None:
        # This node's own list keeps what cannot reach the database meanwhile.
        from gateway.state.pgsuppression import PgSuppression
        return PgSuppression(database, LocalSuppression(config.delivery.suppression.file))
    return LocalSuppression(config.delivery.suppression.file)


class SharedState:
    """The state one gateway process works with; `close` when the process stops."""

    def __init__(self, config: Config, database: Database | None = None) -> None:
        self.config = config
        self.node_id = config.cluster.node_id
        self.database = database  # None: this node's files only
        self.suppression: Suppression | None = None
        self._limits: Limits | None = None

    @classmethod
    def open(cls, config: Config) -> SharedState:
        """The database (schema checked: a node refuses to run against one it does not know)."""
        database = open_database(config)
        if database is not None:
            try:
                database.check_schema()
            except StateUnavailable as exc:
                # Mail is still accepted without the database (the audit waits, suppression
                # lookups defer): a node restarting during an outage must come up.
                metrics.CLUSTER_STATE_UP.labels("postgres").set(0)
                eventlog.event(log, "cluster_database_unreachable", logging.ERROR, error=str(exc),
                               note="starting anyway; the schema is checked when it answers")
            except BaseException:
                database.close()
                raise
            else:
                metrics.CLUSTER_STATE_UP.labels("postgres").set(1)
        if config.cluster.enabled:
            metrics.NODE_INFO.labels(config.cluster.node_id).set(1)
        return cls(config, database)

    def open_suppression(self) -> Suppression:
        if self.suppression is None:
            self.suppression = open_suppression(self.config, self.database)
        return self.suppression

    def portal_records(self) -> PortalRecords | None:
        """The cluster's portal records (None on one node: the portal keeps its files)."""
        if self.database is None:
            return None
        from gateway.state.pgportal import PgPortalRecords
        return PgPortalRecords(self.database)

    def portal_password_hashes(self) -> PasswordHashes | None:
        if self.database is None:
            return None
        from gateway.state.pgportal import PgPasswordHashes
        return PgPasswordHashes(self.database)

    def api_tokens(self) -> PgApiTokens | None:
        """The cluster's API tokens (None on one node: the tokens file)."""
        if self.database is None:
            return None
        from gateway.state.postgres import PgApiTokens
        return PgApiTokens(self.database)

    def audit_copy(self) -> PgAuditCopy | None:
        """The cluster's copy of every node's audit log (None on one node)."""
        if self.database is None:
            return None
        from gateway.state.audit_copy import PgAuditCopy
        return PgAuditCopy(self.database)

    def lease(self, name: str) -> PgLease | None:
        """A lease one process of the cluster holds at a time (None on one node: no contest)."""
        if self.database is None:
            return None
        from gateway.state.postgres import PgLease
        return PgLease(self.database, name, f"{self.node_id}:{os.getpid()}")

    def limits(self, queues: Callable[[], Mapping[str, int]] = dict) -> Limits:
        """Delivery's limits and counters (made once; they outlive reloads). Shared ones start
        their lease renewals and heartbeats here, so call it on the event loop."""
        if self._limits is None:
            cluster, delivery = self.config.cluster, self.config.delivery
            local = LocalLimits(WarmupCounts(delivery.warmup_file))
            if cluster.redis is None:
                self._limits = local
            else:
                from gateway.state.redis import RedisLimits, connect
                client = connect(cluster.redis, _password(cluster.redis_password_file), _ca(cluster))
                shared = RedisLimits(client, cluster.node_id, local, queues=queues)
                shared.start()
                self._limits = shared
                eventlog.event(log, "cluster_limits",
                               node=cluster.node_id, store="redis")
        return self._limits

    async def close(self) -> None:
        if self._limits is not None:
            await self._limits.close()
        if self.suppression is not None:
            self.suppression.close()
        if self.database is not None:
            self.database.close()


def redis_view(config: Config, names: list[str]) -> tuple[float, list[Any], dict[str, dict[str, Any]]]:
    cluster = config.cluster
    assert cluster.redis is not None
    from gateway.state.redis import cluster_view
    return cluster_view(cluster.redis, _password(cluster.redis_password_file), _ca(cluster), names)


def warmup_today(config: Config, ips: list[str], now: float) -> dict[str, dict[str, int]]:
    """Today's warm-up counts per IP and provider: the cluster's, or this node's file."""
    cluster = config.cluster
    day = utc_day(now).isoformat()
    if cluster.redis is not None:
        from gateway.state.redis import warmup_counts
        return warmup_counts(cluster.redis, day, ips, _password(cluster.redis_password_file), _ca(cluster))
    counts = WarmupCounts(config.delivery.warmup_file)
    return {ip: dict(counts.counts.get(ip, {})) for ip in ips} if counts.day == day else {}
