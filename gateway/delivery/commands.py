"""``mailward suppress``, ``mailward pool`` and ``mailward queue reinject``: the suppression
list, egress IPs and handing queued mail to another node, by hand.

Both work on state the running gateway shares (the suppression list, on this node or in the
cluster's database; the egress state file), so they take effect at once (pool changes within a
second) without a reload.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time

from gateway.audit.events import Audit, os_user
from gateway.config import Config
from gateway.errors import EXIT_FAIL, EXIT_OK, MailwardError
from gateway.reputation.egress import EgressPools, IpState, read_ip_states, write_ip_state
from gateway.state.cluster import open_database, open_suppression, warmup_today
from gateway.state.limits import LocalLimits, utc_day
from gateway.state.suppression import GLOBAL


def cmd_suppress(config: Config, args: argparse.Namespace) -> int:
    database = open_database(config)
    suppression = open_suppression(config, database)
    audit = Audit.open(config.audit)
    try:
        if args.action == "add":
            scope = (args.domain or GLOBAL).lower()
            added = suppression.add(args.address, scope=scope, reason=args.reason or "manual",
                                    detail=f"by {os_user()}")
            audit.write_sync({"event": "suppressed", "queue_id": None, "recipient": args.address.lower(),
                              "scope": scope, "reason": args.reason or "manual", "user": os_user(),
                              "by": "admin"})
            print(f"{args.address}: {'suppressed' if added else 'already suppressed, updated'} "
                  f"for {'every sender domain' if scope == GLOBAL else scope}")
            return EXIT_OK
        if args.action == "remove":
            removed = suppression.remove(args.address, scope=args.domain)
            if not removed:
                raise MailwardError(f"{args.address}: not on the suppression list")
            audit.write_sync({"event": "unsuppressed", "queue_id": None, "recipient": args.address.lower(),
                              "scope": args.domain or "all", "user": os_user(), "by": "admin"})
            print(f"{args.address}: removed ({removed} entr{'y' if removed == 1 else 'ies'})")
            return EXIT_OK
        entries = suppression.entries()
        if args.json:
            print(json.dumps([{"address": e.address, "scope": e.scope, "reason": e.reason,
                               "detail": e.detail, "at": _iso(e.at)} for e in entries], indent=1))
        else:
            for e in entries:
                print(f"{e.address}\t{e.scope}\t{e.reason}\t{_iso(e.at)}\t{e.detail}")
            if not entries:
                print("the suppression list is empty", file=sys.stderr)
        return EXIT_OK
    finally:
        suppression.close()
        if database is not None:
            database.close()
        audit.close()


def cmd_pool(config: Config, args: argparse.Namespace) -> int:
    delivery = config.delivery
    known = {ip.address for pool in delivery.pools.values() for ip in pool.ips}
    if args.action != "status":
        if args.address not in known:
            raise MailwardError(f"{args.address}: not an IP of any pool in delivery.pools")
        states_by_action: dict[str, IpState] = {"drain": "drain", "disable": "disabled", "enable": "active"}
        state = states_by_action[args.action]
        write_ip_state(delivery.egress_state_file, args.address, state)
        Audit.open(config.audit).write_sync({"event": f"egress_{state}", "queue_id": None,
                                             "egress_ip": args.address, "user": os_user(), "by": "admin"})
        print(f"{args.address}: {state} (the running gateway follows within a second)")
        return EXIT_OK
    pools = EgressPools.load(delivery, config.hostname, LocalLimits())
    states = read_ip_states(delivery.egress_state_file)
    now = time.time()
    today = warmup_today(config, [str(ip.address) for pool in pools.pools.values() for ip in pool.ips], now)
    report = []
    for pool in pools.pools.values():
        for ip in pool.ips:
            counts = today.get(str(ip.address), {})
            report.append({"pool": pool.name, "stream": pool.stream, "address": ip.address, "ehlo": ip.ehlo,
                           "weight": ip.weight, "state": states.get(str(ip.address), "active"),
                           "warmup_cap_today": ip.cap(utc_day(now)), "sent_today": counts})
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for row in report:
            cap = row["warmup_cap_today"]
            print(f"{row['pool']:<16}{row['address'] or 'system':<18}{row['ehlo']:<28}{row['state']:<9}"
                  f"weight {row['weight']}  cap/provider today: {cap if cap is not None else '-'}  "
                  f"sent today: {row['sent_today'] or '-'}")
    return EXIT_OK


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_queue_reinject(config: Config, args: argparse.Namespace) -> int:
    from gateway.delivery.reinject import MOVABLE, reinject
    from gateway.spool import open_spool

    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        raise MailwardError(f"--to {args.to}: expected HOST:PORT of the other node's listener")
    spool = open_spool(config.spool)
    ids = list(args.queue_ids)
    if args.all:
        ids += [queue_id for state in MOVABLE for queue_id in spool.ids(state)]
    if not ids:
        raise MailwardError("name the messages (queue ids) or give --all")
    audit = Audit.open(config.audit)
    try:
        handed = asyncio.run(reinject(config, spool, audit, ids, host.strip("[]"), int(port)))
    finally:
        audit.close()
        spool.close()
    if args.json:
        print(json.dumps([{"queue_id": h.queue_id, "ok": h.ok, "result": h.result} for h in handed],
                         indent=1))
    for h in handed if not args.json else ():
        print(f"{h.queue_id}: {h.result}", file=sys.stdout if h.ok else sys.stderr)
    return EXIT_OK if all(h.ok for h in handed) else EXIT_FAIL
