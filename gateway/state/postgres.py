"""Durable state shared by every node of a cluster, in PostgreSQL: the connection pool, the
schema and its migrations, API tokens and cluster leases. The suppression list is in
`pgsuppression`, the portal's records in `pgportal`.

psycopg 3 with a small blocking connection pool (psycopg_pool.ConnectionPool), not the async
driver: every caller already runs in a thread (the suppression lookup rides the same I/O-thread
trip as the spool read that precedes each delivery; the CLI is synchronous), so a blocking pool
costs no extra hop to the event loop, and a single driver serves both.

Errors: psycopg's exceptions are mapped here into `StateUnavailable` (the server is away or
refused) so callers decide fail-open or fail-closed with the project's own type. Timeouts are
short (CONNECT_TIMEOUT), so a dead server is noticed within seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway import apitokens
from gateway.errors import MailwardError, StateUnavailable

log = logging.getLogger("mailward.cluster")

CONNECT_TIMEOUT = 3  # seconds: to open a connection, and to wait for one from the pool
STATEMENT_TIMEOUT_MS = 10_000
RETRY_AFTER_FAILURE = 1.0  # seconds callers fail fast after the database did not answer
_MIGRATION_LOCK = 0x6D77  # pg_advisory_xact_lock key: one `cluster init` at a time

# Versioned, forward-only migrations: (version, what it adds, statements). `cluster init` runs
# the ones a database lacks, each in its own transaction; `mailward run` refuses a database
# whose version is not the last one here.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "suppression list", (
        """CREATE TABLE suppressed (
            address text NOT NULL,      -- lowercased
            scope text NOT NULL,        -- a sender domain, or '*' for all
            reason text NOT NULL,       -- bounce, complaint, unsubscribe, manual
            detail text NOT NULL DEFAULT '',
            at double precision NOT NULL,
            PRIMARY KEY (address, scope))""",
        "CREATE INDEX suppressed_at ON suppressed (at DESC)",
    )),
    (2, "portal store", (
        """CREATE TABLE portal_messages (
            message_id text PRIMARY KEY,  -- SHA-256 of the link token (the token is never stored)
            blob bytea NOT NULL,          -- sealed by the portal under its key: no readable content
            expires double precision NOT NULL)""",
        "CREATE INDEX portal_messages_expires ON portal_messages (expires)",
        """CREATE TABLE portal_tombstones (
            message_id text PRIMARY KEY, reason text NOT NULL, at double precision NOT NULL)""",
        """CREATE TABLE portal_passwords (
            address_key text PRIMARY KEY,  -- SHA-256 of the address
            password_hash text NOT NULL)   -- argon2id""",
        """CREATE TABLE portal_locks (
            message_id text PRIMARY KEY, holder text NOT NULL, until timestamptz NOT NULL)""",
    )),
    (3, "API tokens", (
        """CREATE TABLE api_tokens (
            name text PRIMARY KEY,
            line text NOT NULL)  -- NAME SCOPES SENDER_DOMAINS POOLS sha256:HEX: a hash, never the token""",
    )),
    (4, "audit copy, webhook cursors and leases", (
        """CREATE TABLE audit_records (
            node_id text NOT NULL,
            seq bigint NOT NULL,       -- the node's own chain
            ts text NOT NULL,          -- RFC 3339 UTC, as in the record
            event text NOT NULL,
            queue_id text,
            line text NOT NULL,        -- the record exactly as the node wrote it (hash and MAC included)
            PRIMARY KEY (node_id, seq))""",
        "CREATE INDEX audit_records_ts ON audit_records (ts)",
        "CREATE INDEX audit_records_queue_id ON audit_records (queue_id)",
        """CREATE TABLE webhook_cursors (
            endpoint text NOT NULL, node_id text NOT NULL, seq bigint NOT NULL,
            PRIMARY KEY (endpoint, node_id))""",
        """CREATE TABLE cluster_leases (
            name text PRIMARY KEY, holder text NOT NULL, until timestamptz NOT NULL)""",
    )),
    (5, "suppression change notices", (
        # Each change to the list tells every listening node (which then drops what it cached).
        """CREATE FUNCTION mailward_suppression_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('mailward_suppression', ''); RETURN NULL; END $$""",
        """CREATE TRIGGER suppressed_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON suppressed
            FOR EACH STATEMENT EXECUTE FUNCTION mailward_suppression_changed()""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaMismatch(MailwardError):
    """The database's schema is not the one this version of Mailward knows."""


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """psycopg's errors as `StateUnavailable`, saying what could not be done."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
        raise StateUnavailable(f"PostgreSQL: cannot {what}: {str(exc).strip().splitlines()[0]}") from None


class Database:
    """A connection pool to the cluster's database; `check_schema` before use."""

    def __init__(self, url: str, *, password: str | None = None, ca_file: str | None = None,
                 max_size: int = 4) -> None:
        options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "autocommit": True,
                                   "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                                   "application_name": "mailward"}
        if password is not None:
            options["password"] = password
        if ca_file is not None:
            options["sslrootcert"] = ca_file
        self.url = url
        self._failed_until = 0.0
        self.options = options  # for connections of their own (LISTEN)
        # Opened lazily and without waiting: a node starts (and accepts mail) while the database
        # is away; each use then waits at most CONNECT_TIMEOUT for a connection.
        self.pool = ConnectionPool(url, kwargs=options, min_size=0, max_size=max_size,
                                   timeout=CONNECT_TIMEOUT, open=False, name="mailward")
        self.pool.open(wait=False)

    @contextlib.contextmanager
    def connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection. While the database has just failed to answer, callers fail at
        once for RETRY_AFTER_FAILURE instead of each waiting CONNECT_TIMEOUT for the pool: a
        burst of deliveries must not tie up every I/O thread during an outage."""
        if time.monotonic() < self._failed_until:
            raise StateUnavailable(f"PostgreSQL: cannot {what}: it did not answer a moment ago")
        try:
            with _mapped(what), self.pool.connection() as conn:
                yield conn
        except StateUnavailable:
            self._failed_until = time.monotonic() + RETRY_AFTER_FAILURE
            raise

    def version(self) -> int:
        """The schema version of the database (0: never initialised)."""
        with self.connection("read the schema version") as conn:
            exists = conn.execute("SELECT to_regclass('mailward_schema') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return 0
            row = conn.execute("SELECT coalesce(max(version), 0) FROM mailward_schema").fetchone()
            return int(row[0]) if row else 0

    def check_schema(self) -> None:
        """Refuse a database this version does not know (older: run `cluster init`; newer:
        upgrade this node)."""
        found = self.version()
        if found < SCHEMA_VERSION:
            raise SchemaMismatch(f"the cluster database has schema version {found}, this Mailward "
                                 f"needs {SCHEMA_VERSION}: run `mailward cluster init`")
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(f"the cluster database has schema version {found}, newer than this "
                                 f"Mailward knows ({SCHEMA_VERSION}): upgrade this node")

    def migrate(self) -> list[tuple[int, str]]:
        """Create or migrate the schema (idempotent); the migrations applied now."""
        applied = []
        with self.connection("migrate the schema") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS mailward_schema (version integer PRIMARY KEY, "
                         "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            for version, description, statements in MIGRATIONS:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    done = conn.execute("SELECT 1 FROM mailward_schema WHERE version = %s",
                                        (version,)).fetchone()
                    if done:
                        continue
                    for statement in statements:
                        conn.execute(statement)  # our own constants
                    conn.execute("INSERT INTO mailward_schema (version, description) VALUES (%s, %s)",
                                 (version, description))
                applied.append((version, description))
        return applied

    def close(self) -> None:
        self.pool.close()


class PgApiTokens:
    """API bearer tokens (hashes only) for every node; `mailward api token` edits them here."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def load(self) -> list[apitokens.ApiToken]:
        with self.database.connection("read the API tokens") as conn:
            lines = [str(row[0]) for row in conn.execute("SELECT line FROM api_tokens ORDER BY name")]
        return apitokens.parse(lines, "the cluster database's api_tokens")

    def add(self, name: str, scopes: list[str], sender_domains: list[str], pools: list[str]) -> str:
        token, entry = apitokens.new(name, scopes, sender_domains, pools, [])
        with self.database.connection("add an API token") as conn:
            added = conn.execute("INSERT INTO api_tokens (name, line) VALUES (%s, %s) ON CONFLICT (name) "
                                 "DO NOTHING RETURNING name", (name, entry.line())).fetchone()
        if not added:
            raise ValueError(f"a token named {name} exists; remove it first")
        return token

    def remove(self, name: str) -> bool:
        with self.database.connection("remove an API token") as conn:
            return conn.execute("DELETE FROM api_tokens WHERE name = %s", (name,)).rowcount > 0


class PgLease:
    """A named lease one node holds at a time (e.g. the webhook dispatcher): `hold` takes it or
    keeps it for `ttl` more seconds; a node that dies loses it when it lapses."""

    def __init__(self, database: Database, name: str, holder: str) -> None:
        self.database, self.name, self.holder = database, name, holder

    def hold(self, ttl: float) -> bool:
        with self.database.connection("take a cluster lease") as conn:
            row = conn.execute(
                "INSERT INTO cluster_leases (name, holder, until) VALUES "
                "(%s, %s, now() + make_interval(secs => %s)) ON CONFLICT (name) DO UPDATE "
                "SET holder = excluded.holder, until = excluded.until "
                "WHERE cluster_leases.holder = excluded.holder OR cluster_leases.until < now() "
                "RETURNING holder",
                (self.name, self.holder, ttl)).fetchone()
        return row is not None

    def give_up(self) -> None:
        with self.database.connection("give up a cluster lease") as conn:
            conn.execute("DELETE FROM cluster_leases WHERE name = %s AND holder = %s",
                         (self.name, self.holder))
