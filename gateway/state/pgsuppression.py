"""The suppression list in PostgreSQL, for every node of a cluster (`state.suppression` has the
interface and the SQLite list of one node).

Every recipient of every message is looked up, and almost every answer is "not suppressed". A
node keeps those answers (`NegativeCache`) while it listens to the database's change notices
(LISTEN; a trigger NOTIFYs on every change to the list) and drops them all at each notice, so a
cached answer is at most one notice's delivery old. While the listening connection is down
nothing is cached and every lookup asks the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import psycopg

from gateway import eventlog
from gateway.errors import StateUnavailable
from gateway.state.postgres import Database
from gateway.state.suppression import GLOBAL, Entry, LocalSuppression

log = logging.getLogger("mailward.cluster")
CHANNEL = "mailward_suppression"
CACHE_SIZE = 100_000  # answers kept; the oldest go first
RELISTEN = 2.0  # seconds between tries to listen again after the connection dropped


class NegativeCache:
    """"Not suppressed" answers, valid while a LISTEN connection is up; dropped at each notice."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._answers: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._generation = 0  # bumped at every notice (and when listening stops)
        self._listening = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # started by the first lookup

    def generation(self) -> int | None:
        """The generation to store an answer under; None while answers may not be kept."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._listen, name="suppression-notices",
                                                    daemon=True)
                    self._thread.start()
        return self._generation if self._listening else None

    def known_clear(self, key: tuple[str, str]) -> bool:
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return True
        return False

    def keep(self, key: tuple[str, str], generation: int | None) -> None:
        """Keep a "not suppressed" answer read under `generation`, unless a notice came since."""
        with self._lock:
            if generation is None or generation != self._generation or not self._listening:
                return
            self._answers[key] = None
            if len(self._answers) > CACHE_SIZE:
                self._answers.popitem(last=False)

    def _drop(self, listening: bool) -> None:
        with self._lock:
            self._generation += 1
            self._answers.clear()
            self._listening = listening

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database.url, **self.database.options) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._drop(listening=True)
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._drop(listening=True)
            except psycopg.Error:
                pass
            self._drop(listening=False)
            self._stop.wait(RELISTEN)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class PgSuppression:
    """`Suppression` in PostgreSQL: every node sees an entry as soon as it is committed. A
    lookup that cannot be answered raises StateUnavailable: delivery defers (fails closed).

    An entry that cannot be added (a hard bounce while the database is away) goes to `pending`,
    this node's own SQLite list, and is moved to PostgreSQL by the first call that reaches it
    again: a bounce is never forgotten, and is checked locally meanwhile."""

    def __init__(self, database: Database, pending: LocalSuppression | None = None) -> None:
        self.database = database
        self.pending = pending
        self.cache = NegativeCache(database)
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
        key = (address.lower(), sender_domain.lower())
        if self.cache.known_clear(key):
            return None
        generation = self.cache.generation()
        with self.database.connection("look up the suppression list") as conn:
            row = conn.execute(
                "SELECT address, scope, reason, detail, at FROM suppressed WHERE address = %s "
                "AND scope IN (%s, %s) ORDER BY scope = %s DESC LIMIT 1",
                (*key, GLOBAL, GLOBAL)).fetchone()
        if row is None:
            self.cache.keep(key, generation)
            return None
        return Entry(*row)

    def entries(self, limit: int = 10000) -> list[Entry]:
        with self.database.connection("list the suppression list") as conn:
            rows = conn.execute("SELECT address, scope, reason, detail, at FROM suppressed "
                                "ORDER BY at DESC LIMIT %s", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def close(self) -> None:
        self.cache.close()
        if self.pending is not None:  # the pool belongs to the Database
            self.pending.close()
