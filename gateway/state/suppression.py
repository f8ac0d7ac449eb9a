"""The suppression list: recipients not to send to, per sender domain or for everyone.

Hard bounces (bad mailbox), complaints (feedback loop reports) and unsubscribes add entries with
their reason and time; `mailward suppress` adds, removes and lists them by hand. Delivery checks
each recipient before it is tried, in a thread (the calls block).

`LocalSuppression` is one SQLite file (stdlib, WAL) shared by the gateway's processes and the
CLI: lookups are an indexed read, and a list of a million addresses stays cheap. In a cluster,
`state.postgres.PgSuppression` keeps the same entries in PostgreSQL for every node; there a
lookup that cannot be answered raises `StateUnavailable` and delivery defers (fails closed).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

GLOBAL = "*"  # the scope of an entry that applies to every sender domain

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressed (
    scope TEXT NOT NULL,      -- a sender domain, or '*' for all
    address TEXT NOT NULL,    -- lowercased
    reason TEXT NOT NULL,     -- bounce, complaint, unsubscribe, manual
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    PRIMARY KEY (address, scope)
)
"""


@dataclass(frozen=True)
class Entry:
    address: str
    scope: str
    reason: str
    detail: str
    at: float


class Suppression(Protocol):
    def add(self, address: str, *, scope: str = GLOBAL, reason: str = "manual", detail: str = "",
            at: float | None = None) -> bool:
        """Add (or refresh) an entry; True if it was not there before."""
        ...

    def remove(self, address: str, *, scope: str | None = None) -> int: ...

    def find(self, address: str, sender_domain: str) -> Entry | None:
        """The entry that stops mail from `sender_domain` to `address`, if any."""
        ...

    def entries(self, limit: int = 10000) -> list[Entry]: ...

    def close(self) -> None: ...


class LocalSuppression:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        # Whether the list is empty, as of the database's data_version then (None: unknown).
        # SQLite changes data_version whenever another connection commits, so an empty list
        # costs no query per recipient, and an add anywhere is seen at once.
        self._seen_version: int | None = None
        self._empty = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an added entry survives a crash
            self._db.execute(_SCHEMA)
        path.chmod(0o600)

    def add(self, address: str, *, scope: str = GLOBAL, reason: str = "manual", detail: str = "",
            at: float | None = None) -> bool:
        """Add (or refresh) an entry; True if it was not there before."""
        key = (address.lower(), scope.lower())
        with self._lock:
            self._seen_version = None
            existed = self._db.execute("SELECT 1 FROM suppressed WHERE address = ? AND scope = ?",
                                       key).fetchone() is not None
            self._db.execute("INSERT OR REPLACE INTO suppressed (address, scope, reason, detail, at) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (*key, reason, detail[:300], at if at is not None else time.time()))
        return not existed

    def remove(self, address: str, *, scope: str | None = None) -> int:
        with self._lock:
            self._seen_version = None
            if scope is None:
                cursor = self._db.execute("DELETE FROM suppressed WHERE address = ?", (address.lower(),))
            else:
                cursor = self._db.execute("DELETE FROM suppressed WHERE address = ? AND scope = ?",
                                          (address.lower(), scope.lower()))
            return cursor.rowcount

    def find(self, address: str, sender_domain: str) -> Entry | None:
        """The entry that stops mail from `sender_domain` to `address`, if any."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._seen_version:
                self._empty = bool(self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM suppressed)")
                                   .fetchone()[0])
                self._seen_version = version
            if self._empty:
                return None
            row = self._db.execute(
                "SELECT address, scope, reason, detail, at FROM suppressed WHERE address = ? "
                "AND scope IN (?, ?) ORDER BY scope = ? DESC LIMIT 1",
                (address.lower(), sender_domain.lower(), GLOBAL, GLOBAL)).fetchone()
        return Entry(*row) if row else None

    def entries(self, limit: int = 10000) -> list[Entry]:
        with self._lock:
            rows = self._db.execute("SELECT address, scope, reason, detail, at FROM suppressed "
                                    "ORDER BY at DESC LIMIT ?", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
