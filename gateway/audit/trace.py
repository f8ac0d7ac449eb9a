"""Reading the audit trail for people: every record of the messages a search finds, grouped
into one timeline per message (received, policy, protection, each delivery attempt, DSNs,
portal events), and the counts of a compliance report for a period.

On one node the records come from the node's audit files; in a cluster from the copy of every
node's (`state.audit_copy`), each with its `node`. Only audit records are read: no content, ever.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import reader
from gateway.config import Config
from gateway.errors import MailwardError
from gateway.keyfiles import hex_key

# What a timeline row shows of a record, in this order (all of it from the audit record).
DETAIL_KEYS = ("recipient", "client", "helo", "auth", "relay", "action", "rules", "detectors",
               "protection", "reason", "mx", "ip", "egress_ip", "tls", "code", "status", "attempt",
               "portal_id", "user", "by", "node")


def search(config: Config, query: reader.Query) -> list[dict[str, Any]]:
    """This node's records, or in a cluster every node's (from the copy), with `node` added."""
    from gateway.state.cluster import open_database

    database = open_database(config)
    if database is None:
        return reader.search(config.audit.dir, query)
    from gateway.state.audit_copy import PgAuditCopy

    try:
        bound = [moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S") if moment else None
                 for moment in (query.since, query.until)]
        lines = PgAuditCopy(database).lines(bound[0], bound[1], query.queue_id)
        return reader.select(({**json.loads(line), "node": node} for node, line in lines), query)
    finally:
        database.close()


def audit_key(config: Config) -> bytes:
    if not config.audit.key_file.exists():
        raise MailwardError(f"{config.audit.key_file}: no audit key (the gateway makes it on first start)")
    return hex_key(config.audit.key_file, create=False)


def verify(config: Config) -> tuple[reader.Verification, dict[str, reader.Verification]]:
    """This node's log, and in a cluster each node's chain in the copy."""
    key = audit_key(config)
    local = reader.verify(config.audit.dir, key)
    from gateway.state.cluster import open_database

    database = open_database(config)
    if database is None:
        return local, {}
    from gateway.state.audit_copy import PgAuditCopy

    try:
        copy = PgAuditCopy(database)
        return local, {node: reader.verify_lines(node, copy.chain(node), key) for node in copy.nodes()}
    finally:
        database.close()


def verification_json(local: reader.Verification, shipped: dict[str, reader.Verification]) -> dict[str, Any]:
    def one(result: reader.Verification) -> dict[str, Any]:
        return {"ok": not result.problems, "records": result.records, "files": result.files,
                "first_seq": result.first_seq, "last_seq": result.last_seq,
                "problems": [{"where": p.where, "seq": p.seq, "message": p.message} for p in result.problems]}

    failed = bool(local.problems) or any(v.problems for v in shipped.values())
    return {"ok": not failed, **one(local), "cluster": {node: one(v) for node, v in shipped.items()}}


@dataclass
class Timeline:
    queue_id: str
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    message_id: str = ""
    rows: list[dict[str, str]] = field(default_factory=list)  # ts, event, detail
    outcome: Counter[str] = field(default_factory=Counter)  # final results by kind


def _detail(record: dict[str, Any]) -> str:
    parts = []
    for key in DETAIL_KEYS:
        value = record.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def timelines(records: list[dict[str, Any]]) -> list[Timeline]:
    """One timeline per queue id, in the order of the first record of each."""
    found: dict[str, Timeline] = {}
    for record in records:
        queue_id = record.get("queue_id")
        if not queue_id:
            continue
        timeline = found.setdefault(str(queue_id), Timeline(str(queue_id)))
        if record.get("event") == "received":
            timeline.sender = str(record.get("sender") or "<>")
            timeline.recipients = [str(r) for r in record.get("recipients") or []]
            timeline.message_id = str(record.get("message_id") or "")
        if record.get("event") in ("delivered", "bounced", "expired"):
            timeline.outcome[str(record["event"])] += 1
        timeline.rows.append({"ts": str(record.get("ts", ""))[:19].replace("T", " "),
                              "event": str(record.get("event", "")), "detail": _detail(record)})
    return list(found.values())


def report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts of a compliance report: results, protection of delivered recipients, policy
    rules and actions, recipient domains reached without verified TLS, bounces and complaints
    per pool."""
    results: Counter[str] = Counter()
    protection: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    unverified: Counter[str] = Counter()
    per_pool: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        event = record.get("event")
        if event == "policy":
            actions[str(record.get("action"))] += 1
            rules.update(str(rule) for rule in record.get("rules") or [])
        elif event in ("delivered", "bounced", "expired", "deferred"):
            results[str(event)] += 1
        if event == "delivered":
            protection[str(record.get("protection") or "none")] += 1
            tls = record.get("tls") or {}
            if not (isinstance(tls, dict) and tls.get("verified")) and record.get("protection") != "portal":
                unverified[str(record.get("recipient", "")).rpartition("@")[2].lower()] += 1
        if event in ("delivered", "bounced"):
            per_pool[str(record.get("pool") or "default")][str(event)] += 1
        if event == "complaint":
            per_pool[str(record.get("pool") or "default")]["complaints"] += 1
    pools = {pool: {"delivered": c["delivered"], "bounced": c["bounced"], "complaints": c["complaints"],
                    "bounce_rate": c["bounced"] / max(1, c["delivered"] + c["bounced"]),
                    "complaint_rate": c["complaints"] / max(1, c["delivered"])}
             for pool, c in sorted(per_pool.items())}
    return {"messages_received": sum(r.get("event") == "received" for r in records),
            "results": dict(results.most_common()), "protection": dict(protection.most_common()),
            "rules": dict(rules.most_common()), "actions": dict(actions.most_common()),
            "domains_without_verified_tls": dict(unverified.most_common(10)), "pools": pools,
            "records": len(records)}


def report_csv(counts: dict[str, Any]) -> str:
    """The report as CSV: section, name, value."""
    lines = ["section,name,value"]
    for section in ("results", "protection", "rules", "actions", "domains_without_verified_tls"):
        lines += [f"{section},{_csv(name)},{value}" for name, value in counts[section].items()]
    for pool, figures in counts["pools"].items():
        lines += [f"pool {_csv(pool)},{key},{value:.4f}" if isinstance(value, float)
                  else f"pool {_csv(pool)},{key},{value}" for key, value in figures.items()]
    lines.append(f"total,messages_received,{counts['messages_received']}")
    return "\n".join(lines) + "\n"


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
