"""``mailward cluster init`` and ``mailward cluster status``.

`init` creates or migrates the cluster database's schema (idempotent; run it from any node,
before starting nodes of a new version). `status` lists the nodes that sent a heartbeat in the
last day, live or not, with their queue sizes, and the shared limits in force: connections open
per shaping rule and any throttling pause, as Redis counts them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.config import Config
from gateway.errors import EXIT_FAIL, EXIT_OK, MailwardError
from gateway.state.cluster import open_database, redis_view
from gateway.state.postgres import SCHEMA_VERSION
from gateway.state.redis import NODE_TTL


def cmd_cluster(config: Config, args: argparse.Namespace) -> int:
    if not config.cluster.enabled:
        raise MailwardError("no cluster: set cluster.node_id, cluster.redis and cluster.postgres "
                            "(docs/cluster.md)")
    if args.action == "init":
        return _init(config)
    return _status(config, as_json=args.json)


def _init(config: Config) -> int:
    database = open_database(config)
    if database is None:
        raise MailwardError("cluster.postgres is not set: there is no schema to create")
    try:
        before = database.version()
        applied = database.migrate()
    finally:
        database.close()
    for version, description in applied:
        print(f"schema version {version}: {description}")
    print(f"cluster database at schema version {SCHEMA_VERSION}"
          + (" (was already)" if not applied else f" (was {before})"))
    return EXIT_OK


def _status(config: Config, *, as_json: bool) -> int:
    report: dict[str, Any] = {"node_id": config.cluster.node_id, "schema": None, "nodes": [], "limits": {}}
    problems = []
    database = open_database(config)
    if database is not None:
        try:
            report["schema"] = {"version": database.version(), "expected": SCHEMA_VERSION}
        except MailwardError as exc:
            problems.append(str(exc))
        finally:
            database.close()
    if config.cluster.redis is not None:
        rules = dict(config.delivery.shaping)
        try:
            now, nodes, limits = redis_view(config, list(rules))
        except MailwardError as exc:
            problems.append(str(exc))
        else:
            report["nodes"] = [{"node_id": n.node_id, "live": now - n.seen < NODE_TTL,
                                "last_seen_seconds": round(now - n.seen, 1), "queues": dict(n.queues),
                                "fallback": n.fallback} for n in nodes]
            report["limits"] = {name: {**limits[name], "max_connections": rule.max_connections,
                                       "per_minute": rule.per_minute, "per_hour": rule.per_hour}
                                for name, rule in rules.items()}
    report["problems"] = problems
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    return EXIT_FAIL if problems else EXIT_OK


def _print(report: dict[str, Any]) -> None:
    schema = report["schema"]
    if schema is not None:
        print(f"database schema: version {schema['version']} (this node needs {schema['expected']})")
    print(f"nodes ({sum(1 for n in report['nodes'] if n['live'])} live):")
    for node in report["nodes"]:
        queues = " ".join(f"{k}={v}" for k, v in sorted(node["queues"].items()))
        state = "live" if node["live"] else f"silent {node['last_seen_seconds']:.0f}s"
        print(f"  {node['node_id']:<20}{state:<14}{'FALLBACK ' if node['fallback'] else ''}{queues}")
    if report["limits"]:
        print("shared limits:")
    for name, limit in report["limits"].items():
        paused = f"  paused {limit['paused_seconds']:.0f}s" if limit["paused_seconds"] else ""
        most = limit["max_connections"] or "-"
        print(f"  {name:<20}connections {limit['connections']}/{most}{paused}")
    for problem in report["problems"]:
        print(f"problem: {problem}")
