"""The portal's sealed records, tombstones, per-message locks and recipients' password hashes
in PostgreSQL (`state.portal` has the interfaces and the files of one node): any node serves any
link, and a wrong passcode on one node counts on all. Blocking calls: the portal runs them in a
thread."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator

from gateway.errors import StateUnavailable
from gateway.state.postgres import Database

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
