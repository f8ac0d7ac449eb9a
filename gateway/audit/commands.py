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

from gateway.audit import reader, trace
from gateway.config import Config
from gateway.errors import EXIT_FAIL, EXIT_OK, MailwardError


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
    result, shipped = trace.verify(config)
    failed = bool(result.problems) or any(v.problems for v in shipped.values())
    if args.json:
        print(json.dumps(trace.verification_json(result, shipped), indent=1))
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
    records = trace.search(config, _query(args))
    sys.stdout.write(_jsonl(records))
    return EXIT_OK if records else EXIT_FAIL


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    if not (args.since or args.until):
        raise MailwardError("give --since and/or --until: an export covers a period")
    records = trace.search(config, _query(args))
    text = reader.to_csv(records) if args.format == "csv" else _jsonl(records)
    output: Path | None = args.output
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
    print(json.dumps({"summary": reader.summary(records)}, indent=1), file=sys.stderr if output is None
          else sys.stdout)
    return EXIT_OK
