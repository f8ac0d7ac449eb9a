"""`scripts/bench relay --cluster`: a 3-node cluster beside one node and Postfix, in one run.

All on this one machine, so the 3 nodes share its cores: the figure says what the shared state
costs and whether 3 nodes together keep up with one, not how far a cluster of machines scales.

Contenders, each relaying N messages from smtp-source to smtp-sink (as `scripts/bench relay`),
with the shipped policies, audit and DKIM, and a shaping rule for the sink's domain (a
connection limit and a rate budget that do not bind, so every message passes the shared limit
checks without waiting for them):
- `one-node`: one gateway, its limits and lists local (no `cluster:`);
- `one-node-shared`: the same gateway with `cluster:` (Redis and PostgreSQL), alone;
- `three-nodes`: three gateways on 127.0.0.101-.103 sharing Redis and PostgreSQL, each fed a
  third of the messages by its own smtp-source at the same time;
- `postfix`: the reference.

Reported besides msg/s: Redis round trips and PostgreSQL transactions per message, from the
servers' own counters (INFO commandstats; pg_stat_database): what the shared state adds to each
message.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from bench import (
    SINK_HOST,
    SmtpSink,
    bench_policies,
    dkim_signing,
    mailward_gateway,
    relay_delivery,
    run_smtp_source,
)

from gateway.state.postgres import Database
from tests.cluster.servers import PostgresServer, RedisServer
from tests.postfix import postfix_instance

NODES = ("127.0.0.101", "127.0.0.102", "127.0.0.103")


@dataclass
class Row:
    name: str
    rate: float
    redis_per_message: float | None = None
    pg_per_message: float | None = None


def redis_round_trips(url: str) -> int:
    """Requests clients made: each script call counts once (Redis's own counters also count the
    commands a script runs), plus the direct commands (lease releases, heartbeats)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    direct = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_zrem", "cmdstat_zcount", "cmdstat_hincrby")
    return sum(int(stats[name]["calls"]) for name in direct if name in stats)


def pg_transactions(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def shaping(sessions: int) -> str:
    """A rule whose limits are checked for every message but do not bind (so the figure is the
    cost of the checks, not of waiting for a slot)."""
    return (f", shaping: {{sink: {{domains: [example.org], max_connections: {sessions * 2}, "
            f"messages_per_connection: 100, per_minute: 10000000}}}}")


@contextlib.contextmanager
def nodes(base: Path, name: str, count: int, sink: SmtpSink, sessions: int,
          cluster: dict[str, str] | None) -> Iterator[list[tuple[str, int]]]:
    """`count` gateways (on NODES), with `cluster` settings or none; their (host, port)."""
    with contextlib.ExitStack() as stack:
        started = []
        for index in range(count):
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=base, prefix=f"node{index}-")))
            extra = bench_policies(workdir) + dkim_signing(workdir)
            if cluster is not None:
                # Ids of their own: each contender is a new node with a new audit chain.
                extra += (f"cluster: {{node_id: {name}-{index}, redis: '{cluster['redis']}', "
                          f"postgres: '{cluster['postgres']}'}}\n")
            host = NODES[index] if count > 1 else "127.0.0.1"
            # A node's share of the sessions: the limit in the shaping rule is the cluster's.
            port, _, _ = stack.enter_context(mailward_gateway(
                workdir, relay_delivery(sink, sessions, shaping(sessions)), extra, address=host))
            started.append((host, port))
        yield started


def relay(targets: list[tuple[str, int]], sink: SmtpSink, messages: int, sessions: int, size: int) -> float:
    """Send `messages` spread over `targets` at once; seconds until the sink has them all."""
    share, threads = messages // len(targets), []
    started = time.monotonic()
    for host, port in targets:
        threads.append(threading.Thread(target=run_smtp_source, args=(
            port, share, max(1, sessions // len(targets)), size, host)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    if not sink.wait_for(share * len(targets), timeout=900):
        raise SystemExit(f"the sink got only {sink.count} of {share * len(targets)}")
    return time.monotonic() - started


def run(args: argparse.Namespace, base: Path) -> None:
    messages = args.messages - args.messages % 3  # a third for each node
    redis_server = RedisServer(base / "redis")
    postgres = PostgresServer()
    redis_server.start()
    postgres.init()
    postgres.start()
    rows: list[Row] = []
    try:
        database_url = postgres.new_database()
        database = Database(database_url)
        database.migrate()
        database.close()
        shared = {"redis": redis_server.url, "postgres": database_url}
        for name, count, cluster in (("one-node", 1, None), ("one-node-shared", 1, shared),
                                     ("three-nodes", 3, shared), ("postfix", 0, None)):
            sink = SmtpSink()
            try:
                before = (redis_round_trips(redis_server.url), pg_transactions(database_url))
                if name == "postfix":
                    with tempfile.TemporaryDirectory(dir=base, prefix="postfix-") as tmp, \
                            postfix_instance(Path(tmp), (SINK_HOST, sink.port)) as (port, _, _):
                        seconds = relay([("127.0.0.1", port)], sink, messages, args.sessions, args.size)
                else:
                    with nodes(base, name, count, sink, args.sessions, cluster) as targets:
                        before = (redis_round_trips(redis_server.url), pg_transactions(database_url))
                        seconds = relay(targets, sink, messages, args.sessions, args.size)
                        time.sleep(2)  # the audit shipper's last batch, counted with the run
                after = (redis_round_trips(redis_server.url), pg_transactions(database_url))
                row = Row(name, messages / seconds)
                if cluster is not None:
                    row.redis_per_message = (after[0] - before[0]) / messages
                    row.pg_per_message = (after[1] - before[1]) / messages
                rows.append(row)
                print(f"{name}: {row.rate:.0f} msg/s", file=sys.stderr)
            finally:
                sink.close()
    finally:
        redis_server.kill()
        with contextlib.suppress(Exception):
            postgres.stop("immediate")
        postgres.remove()
    report(rows, messages, args)


def report(rows: list[Row], messages: int, args: Any) -> None:
    by_name = {row.name: row for row in rows}
    print(f"\nrelay --cluster: {messages} messages of {args.size} bytes, {args.sessions} sessions in all, "
          "shipped policies + audit + DKIM + a shaping rule; one machine (the nodes share its cores)")
    print(f"{'':<18}{'msg/s':>10}{'vs postfix':>12}{'redis trips/msg':>16}{'pg xacts/msg':>14}")
    reference = by_name["postfix"].rate
    for row in rows:
        redis_cost = f"{row.redis_per_message:16.2f}" if row.redis_per_message is not None else f"{'-':>16}"
        pg_cost = f"{row.pg_per_message:14.2f}" if row.pg_per_message is not None else f"{'-':>14}"
        print(f"{row.name:<18}{row.rate:10.0f}{row.rate / reference:11.2f}x{redis_cost}{pg_cost}")
    print(f"ratio three-nodes/one-node: {by_name['three-nodes'].rate / by_name['one-node'].rate:.2f}x; "
          f"one-node-shared/one-node: {by_name['one-node-shared'].rate / by_name['one-node'].rate:.2f}x")
