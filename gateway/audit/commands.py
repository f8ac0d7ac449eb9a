"""``mailward audit verify|search|export``: the compliance officer's view of the audit log.

In a cluster, `search` and `export` read the cluster's copy (every node's records, each with its
`node`), and `verify` checks this node's file and then every node's chain in the copy (which
needs the same audit key file on every node, as docs/cluster.md says)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from gateway.audit import reader
from gateway.config import Config
from gateway.errors import EXIT_FAIL, EXIT_OK, MailwardError
from gateway.keyfiles import hex_key


def _key(config: Config) -> bytes:
    if not config.audit.key_file.exists():
        raise MailwardError(f"{config.audit.key_file}: no audit key (the gateway makes it on first start)")
    return hex_key(config.audit.key_file, create=False)


def _time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MailwardError(f"{text!r}: expected an ISO 8601 time such as 2026-11-30 or "
                            "2026-11-30T14:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    key = _key(config)
    result = reader.verify(config.audit.dir, key)
    shipped = _verify_copy(config, key)
    failed = bool(result.problems) or any(v.problems for v in shipped.values())
    if args.json:
        print(json.dumps({"ok": not failed, **_verification_json(result),
                          "cluster": {node: _verification_json(v) for node, v in shipped.items()}}, indent=1))
        return EXIT_FAIL if failed else EXIT_OK
    copies = [(f"cluster copy of {node}", verification) for node, verification in shipped.items()]
    for where, verification in [("audit", result), *copies]:
        if verification.problems:
            for problem in verification.problems:
                print(f"{where}: {problem}")
        else:
            files = f" in {verification.files} file(s)" if where == "audit" else ""
            print(f"{where}: chain intact: {verification.records} records{files}, "
                  f"seq {verification.first_seq or 0} to {verification.last_seq}")
    return EXIT_FAIL if failed else EXIT_OK


def _verification_json(result: reader.Verification) -> dict[str, Any]:
    return {"ok": not result.problems, "records": result.records, "files": result.files,
            "first_seq": result.first_seq, "last_seq": result.last_seq,
            "problems": [{"where": p.where, "seq": p.seq, "message": p.message} for p in result.problems]}


def _verify_copy(config: Config, key: bytes) -> dict[str, reader.Verification]:
    """Each node's chain in the cluster's copy (none on one node)."""
    from gateway.state.audit_copy import PgAuditCopy
    from gateway.state.cluster import open_database

    database = open_database(config)
    if database is None:
        return {}
    try:
        copy = PgAuditCopy(database)
        return {node: reader.verify_lines(node, copy.chain(node), key) for node in copy.nodes()}
    finally:
        database.close()


def _search(config: Config, query: reader.Query) -> list[dict[str, Any]]:
    """This node's records, or in a cluster every node's (from the copy), with `node` added."""
    from gateway.state.audit_copy import PgAuditCopy
    from gateway.state.cluster import open_database

    database = open_database(config)
    if database is None:
        return reader.search(config.audit.dir, query)
    try:
        bound = [moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S") if moment else None
                 for moment in (query.since, query.until)]
        lines = PgAuditCopy(database).lines(bound[0], bound[1], query.queue_id)
        return reader.select(({**json.loads(line), "node": node} for node, line in lines), query)
    finally:
        database.close()


def _query(args: argparse.Namespace) -> reader.Query:
    message_id = getattr(args, "message_id", None)
    if message_id and not message_id.startswith("<"):
        message_id = f"<{message_id.strip()}>"  # as the header has it, whichever way it was typed
    return reader.Query(queue_id=getattr(args, "queue_id", None),
                        message_id=message_id, sender=getattr(args, "sender", None),
                        recipient=getattr(args, "recipient", None), since=_time(args.since),
                        until=_time(args.until))


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    records = _search(config, _query(args))
    sys.stdout.write(_jsonl(records))
    return EXIT_OK if records else EXIT_FAIL


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    if not (args.since or args.until):
        raise MailwardError("give --since and/or --until: an export covers a period")
    records = _search(config, _query(args))
    text = reader.to_csv(records) if args.format == "csv" else _jsonl(records)
    output: Path | None = args.output
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
    print(json.dumps({"summary": reader.summary(records)}, indent=1), file=sys.stderr if output is None
          else sys.stdout)
    return EXIT_OK
