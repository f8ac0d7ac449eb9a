"""The cluster's copy of every node's audit log, in PostgreSQL.

Each node writes its own hash-chained audit file first (durable before the 250, as on one node);
`audit.shipper` then copies its records here in order, line for line, so the copy verifies with
the same chain and MAC as the file. Searches, exports and webhooks of a cluster read this copy.
Blocking calls: run them in a thread.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Sequence
from typing import Protocol

import psycopg

from gateway.state.postgres import Database

BATCH = 1000
_COPY = "COPY audit_records (node_id, seq, ts, event, queue_id, line) FROM STDIN"


class ShippedRecord(Protocol):
    seq: int
    ts: str
    event: str
    queue_id: str | None
    line: str  # the record's JSON exactly as written


class PgAuditCopy:
    def __init__(self, database: Database) -> None:
        self.database = database

    def shipped_seq(self, node_id: str) -> int:
        """The last seq of `node_id` in the copy (0: none yet)."""
        with self.database.connection("read the audit copy") as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_records WHERE node_id = %s",
                               (node_id,)).fetchone()
        return int(row[0]) if row else 0

    def last_hash(self, node_id: str) -> str | None:
        """The hash of the last record of `node_id` in the copy."""
        with self.database.connection("read the audit copy") as conn:
            row = conn.execute("SELECT line FROM audit_records WHERE node_id = %s ORDER BY seq DESC LIMIT 1",
                               (node_id,)).fetchone()
        if not row:
            return None
        try:
            return str(json.loads(row[0])["hash"])
        except (ValueError, KeyError):
            return None

    def ship(self, node_id: str, records: Sequence[ShippedRecord]) -> None:
        """Add records (in seq order) in one transaction, with COPY (a fraction of the server's
        work of an INSERT per row). A batch that overlaps what is there (a shipper that crashed
        after the commit and before it noted so) is sent again row by row, skipping those."""
        rows = [(node_id, r.seq, r.ts, r.event, r.queue_id, r.line) for r in records]
        try:
            with self.database.connection("ship audit records") as conn, conn.transaction(), \
                    conn.cursor() as cur, cur.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation:
            with self.database.connection("ship audit records") as conn, conn.transaction(), \
                    conn.cursor() as cur:
                cur.executemany("INSERT INTO audit_records (node_id, seq, ts, event, queue_id, line) "
                                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (node_id, seq) DO NOTHING", rows)

    def nodes(self) -> list[str]:
        with self.database.connection("list the audit copy's nodes") as conn:
            rows = conn.execute("SELECT DISTINCT node_id FROM audit_records ORDER BY 1")
            return [str(row[0]) for row in rows]

    def chain(self, node_id: str) -> Iterator[tuple[int, str]]:
        """(seq, line) of `node_id`, in order, read in batches (a copy of years is not held in memory)."""
        after = -1
        while True:
            with self.database.connection("read the audit copy") as conn:
                rows = conn.execute("SELECT seq, line FROM audit_records WHERE node_id = %s AND seq > %s "
                                    "ORDER BY seq LIMIT %s", (node_id, after, BATCH)).fetchall()
            yield from ((int(seq), str(line)) for seq, line in rows)
            if len(rows) < BATCH:
                return
            after = int(rows[-1][0])

    def lines(self, since: str | None, until: str | None, queue_id: str | None) -> Iterator[tuple[str, str]]:
        """(node_id, line) of the records in [since, until) (RFC 3339 strings compare in time
        order), optionally of one queue id; by time, then node and seq."""
        where, args = ["TRUE"], []
        if since:
            where.append("ts >= %s")
            args.append(since)
        if until:
            where.append("ts < %s")
            args.append(until)
        if queue_id:
            where.append("queue_id = %s")
            args.append(queue_id)
        clauses = " AND ".join(where)  # fixed clauses; the values are bound
        query = f"SELECT node_id, line FROM audit_records WHERE {clauses} ORDER BY ts, node_id, seq"  # noqa: S608
        with self.database.connection("search the audit copy") as conn, conn.transaction(), \
                conn.cursor(name="audit_search") as cursor:
            cursor.itersize = BATCH
            cursor.execute(query, args)
            for node_id, line in cursor:
                yield str(node_id), str(line)

    # Webhook cursors: per endpoint, the last seq dispatched of each node.
    def cursors(self, endpoint: str) -> dict[str, int]:
        with self.database.connection("read webhook cursors") as conn:
            return {str(node): int(seq) for node, seq in conn.execute(
                "SELECT node_id, seq FROM webhook_cursors WHERE endpoint = %s", (endpoint,))}

    def start_cursors(self, endpoint: str) -> dict[str, int]:
        """A new endpoint starts at the end of the copy: events from when it was added."""
        with self.database.connection("start webhook cursors") as conn:
            conn.execute("INSERT INTO webhook_cursors (endpoint, node_id, seq) SELECT %s, node_id, max(seq) "
                         "FROM audit_records GROUP BY node_id ON CONFLICT DO NOTHING", (endpoint,))
            conn.execute("INSERT INTO webhook_cursors (endpoint, node_id, seq) VALUES (%s, '', 0) "
                         "ON CONFLICT DO NOTHING", (endpoint,))  # marks the endpoint as started
        return self.cursors(endpoint)

    def save_cursor(self, endpoint: str, node_id: str, seq: int) -> None:
        with self.database.connection("save a webhook cursor") as conn:
            conn.execute("INSERT INTO webhook_cursors (endpoint, node_id, seq) VALUES (%s, %s, %s) "
                         "ON CONFLICT (endpoint, node_id) DO UPDATE SET seq = excluded.seq",
                         (endpoint, node_id, seq))

    def pending(self, cursors: dict[str, int], limit: int) -> list[tuple[str, int, str]]:
        """(node_id, seq, line) after the cursors (a node without one: from its start), at most
        `limit` per node, each node's in seq order, the nodes' interleaved by time."""
        known = list(cursors.items())
        with self.database.connection("read pending webhook events") as conn:
            rows = conn.execute(
                "SELECT node_id, seq, ts, line FROM (SELECT r.node_id, r.seq, r.ts, r.line, row_number() "
                "OVER (PARTITION BY r.node_id ORDER BY r.seq) AS n FROM audit_records r "
                "LEFT JOIN unnest(%s::text[], %s::bigint[]) AS c(node_id, seq) ON c.node_id = r.node_id "
                "WHERE r.seq > coalesce(c.seq, 0)) p WHERE n <= %s ORDER BY node_id, seq",
                ([n for n, _ in known], [q for _, q in known], limit)).fetchall()
        by_node: dict[str, list[tuple[str, str, int, str]]] = {}
        for node, seq, ts, line in rows:
            by_node.setdefault(str(node), []).append((str(ts), str(node), int(seq), str(line)))
        # Each node's list keeps its order; merge interleaves them by time.
        merged = heapq.merge(*by_node.values(), key=lambda r: r[0])
        return [(node, seq, line) for _, node, seq, line in merged]
