"""Durable state shared by every node of a cluster, in PostgreSQL: the schema and its
migrations, the suppression list, and the portal's sealed records and password hashes.

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
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway import apitokens, eventlog
from gateway.errors import MailwardError, StateUnavailable
from gateway.state.suppression import GLOBAL, Entry, LocalSuppression

log = logging.getLogger("mailward.cluster")

CONNECT_TIMEOUT = 3  # seconds: to open a connection, and to wait for one from the pool
STATEMENT_TIMEOUT_MS = 10_000
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
        # Opened lazily and without waiting: a node starts (and accepts mail) while the database
        # is away; each use then waits at most CONNECT_TIMEOUT for a connection.
        self.pool = ConnectionPool(url, kwargs=options, min_size=0, max_size=max_size,
                                   timeout=CONNECT_TIMEOUT, open=False, name="mailward")
        self.pool.open(wait=False)

    @contextlib.contextmanager
    def connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        with _mapped(what), self.pool.connection() as conn:
            yield conn

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


class PgSuppression:
    """`Suppression` in PostgreSQL: every node sees an entry as soon as it is committed. A
    lookup that cannot be answered raises StateUnavailable: delivery defers (fails closed).

    An entry that cannot be added (a hard bounce while the database is away) goes to `pending`,
    this node's own SQLite list, and is moved to PostgreSQL by the first call that reaches it
    again: a bounce is never forgotten, and is checked locally meanwhile."""

    def __init__(self, database: Database, pending: LocalSuppression | None = None) -> None:
        self.database = database
        self.pending = pending
        self._lock = threading.Lock()
        self._has_pending = pending is not None and bool(pending.entries(1))

    def add(self, address: str, *, scope: str = GLOBAL, reason: str = "manual", detail: str = "",
            at: float | None = None) -> bool:
        try:
            added = self._insert(address, scope=scope, reason=reason, detail=detail, at=at)
        except StateUnavailable:
            if self.pending is None:
                raise
            self.pending.add(address, scope=scope, reason=reason, detail=detail, at=at)
            self._has_pending = True
            eventlog.event(log, "suppression_pending", logging.WARNING, reason=reason,
                           note="kept on this node until the cluster database answers")
            return True
        self._flush()
        return added

    def _flush(self) -> None:
        """Move the entries kept while the database was away into it."""
        if not self._has_pending or self.pending is None:
            return
        with self._lock:
            for entry in self.pending.entries():
                self._insert(entry.address, scope=entry.scope, reason=entry.reason, detail=entry.detail,
                             at=entry.at)
                self.pending.remove(entry.address, scope=entry.scope)
            self._has_pending = False
        eventlog.event(log, "suppression_pending_sent")

    def _insert(self, address: str, *, scope: str, reason: str, detail: str, at: float | None) -> bool:
        with self.database.connection("add to the suppression list") as conn:
            row = conn.execute(
                "INSERT INTO suppressed (address, scope, reason, detail, at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (address, scope) DO UPDATE SET reason = excluded.reason, "
                "detail = excluded.detail, at = excluded.at RETURNING (xmax = 0)",
                (address.lower(), scope.lower(), reason, detail[:300],
                 at if at is not None else time.time())).fetchone()
        return bool(row and row[0])

    def remove(self, address: str, *, scope: str | None = None) -> int:
        with self.database.connection("remove from the suppression list") as conn:
            if scope is None:
                cursor = conn.execute("DELETE FROM suppressed WHERE address = %s", (address.lower(),))
            else:
                cursor = conn.execute("DELETE FROM suppressed WHERE address = %s AND scope = %s",
                                      (address.lower(), scope.lower()))
            return cursor.rowcount

    def find(self, address: str, sender_domain: str) -> Entry | None:
        self._flush()
        if self.pending is not None and self._has_pending:
            entry = self.pending.find(address, sender_domain)
            if entry is not None:
                return entry
        with self.database.connection("look up the suppression list") as conn:
            row = conn.execute(
                "SELECT address, scope, reason, detail, at FROM suppressed WHERE address = %s "
                "AND scope IN (%s, %s) ORDER BY scope = %s DESC LIMIT 1",
                (address.lower(), sender_domain.lower(), GLOBAL, GLOBAL)).fetchone()
        return Entry(*row) if row else None

    def entries(self, limit: int = 10000) -> list[Entry]:
        with self.database.connection("list the suppression list") as conn:
            rows = conn.execute("SELECT address, scope, reason, detail, at FROM suppressed "
                                "ORDER BY at DESC LIMIT %s", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def close(self) -> None:
        if self.pending is not None:  # the pool belongs to the Database
            self.pending.close()


PORTAL_LOCK_TTL = 30.0  # seconds: a lock left by a node that died frees itself after this
PORTAL_LOCK_WAIT = 10.0


class PgPortalRecords:
    """`PortalRecords` in PostgreSQL: sealed blobs any node can serve."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def put(self, message_id: str, blob: bytes, expires: float) -> None:
        with self.database.connection("store a portal message") as conn:
            conn.execute("INSERT INTO portal_messages (message_id, blob, expires) VALUES (%s, %s, %s) "
                         "ON CONFLICT (message_id) DO UPDATE SET blob = excluded.blob, "
                         "expires = excluded.expires", (message_id, blob, expires))

    def get(self, message_id: str) -> bytes | None:
        with self.database.connection("read a portal message") as conn:
            row = conn.execute("SELECT blob FROM portal_messages WHERE message_id = %s",
                               (message_id,)).fetchone()
        return bytes(row[0]) if row else None

    def bury(self, message_id: str, reason: str, at: float) -> bool:
        with self.database.connection("remove a portal message") as conn, conn.transaction():
            conn.execute("INSERT INTO portal_tombstones (message_id, reason, at) VALUES (%s, %s, %s) "
                         "ON CONFLICT (message_id) DO NOTHING", (message_id, reason, at))
            cursor = conn.execute("DELETE FROM portal_messages WHERE message_id = %s", (message_id,))
            return cursor.rowcount > 0

    def tombstone(self, message_id: str) -> tuple[str, float] | None:
        with self.database.connection("read a portal tombstone") as conn:
            row = conn.execute("SELECT reason, at FROM portal_tombstones WHERE message_id = %s",
                               (message_id,)).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def expired(self, now: float) -> list[str]:
        with self.database.connection("list expired portal messages") as conn:
            rows = conn.execute("SELECT message_id FROM portal_messages WHERE expires <= %s ORDER BY 1",
                                (now,)).fetchall()
        return [str(row[0]) for row in rows]

    def ids(self) -> list[str]:
        with self.database.connection("list portal messages") as conn:
            return [str(row[0]) for row in conn.execute("SELECT message_id FROM portal_messages ORDER BY 1")]

    @contextlib.contextmanager
    def lock(self, message_id: str) -> Iterator[None]:
        """A row in portal_locks, taken over when its holder let it lapse (a node that died)."""
        holder = secrets.token_hex(8)
        deadline = time.monotonic() + PORTAL_LOCK_WAIT
        while True:
            with self.database.connection("lock a portal message") as conn:
                row = conn.execute(
                    "INSERT INTO portal_locks (message_id, holder, until) VALUES "
                    "(%s, %s, now() + make_interval(secs => %s)) ON CONFLICT (message_id) DO UPDATE "
                    "SET holder = excluded.holder, until = excluded.until WHERE portal_locks.until < now() "
                    "RETURNING holder", (message_id, holder, PORTAL_LOCK_TTL)).fetchone()
            if row:
                break
            if time.monotonic() > deadline:
                raise StateUnavailable("PostgreSQL: a portal message stayed locked by another node")
            time.sleep(0.02)
        try:
            yield
        finally:
            with self.database.connection("unlock a portal message") as conn:
                conn.execute("DELETE FROM portal_locks WHERE message_id = %s AND holder = %s",
                             (message_id, holder))


class PgPasswordHashes:
    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, key: str) -> str | None:
        with self.database.connection("read a recipient password") as conn:
            row = conn.execute("SELECT password_hash FROM portal_passwords WHERE address_key = %s",
                               (key,)).fetchone()
        return str(row[0]) if row else None

    def put(self, key: str, password_hash: str) -> None:
        with self.database.connection("store a recipient password") as conn:
            conn.execute("INSERT INTO portal_passwords (address_key, password_hash) VALUES (%s, %s) "
                         "ON CONFLICT (address_key) DO UPDATE SET password_hash = excluded.password_hash",
                         (key, password_hash))


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
