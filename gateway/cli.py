"""The ``mailward`` command (SPEC §3): parse arguments, call the modules, print results.

Exit codes: 0 success, 1 a failure the user can fix (the message says how), 2 usage error.
Queue commands work on the spool files directly, so they are safe while ``mailward run`` runs:
each change is one atomic rename, and a message the gateway moved first is reported, not damaged.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__, eventlog
from gateway.config import KEYS_MAY_BE_MISSING, Config, find_config_file, load_config
from gateway.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE, ConfigError, MailwardError
from gateway.message import QueuedMessage
from gateway.spool import QueueState, Spool, SpoolKeyring, open_spool
from gateway.spool.wakeup import WakeSender

if TYPE_CHECKING:
    from gateway.stages.dlp.policy import Policies


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        token = KEYS_MAY_BE_MISSING.set(getattr(args, "creates_keys", False))
        try:
            config = load_config(find_config_file(args.config))
        finally:
            KEYS_MAY_BE_MISSING.reset(token)
        return int(args.handler(config, args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)  # FILE:LINE: message, one per line
        return EXIT_FAIL
    except MailwardError as exc:
        print(f"mailward: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL


Handler = Callable[[Config, argparse.Namespace], int]


def _lazy(module: str, name: str) -> Handler:
    """A command handler imported when the command runs. `mailward run` must be able to set
    PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported, so nothing that
    imports the metrics may be loaded just to build the parser."""
    def handler(config: Config, args: argparse.Namespace) -> int:
        found: Handler = getattr(importlib.import_module(module), name)
        return found(config, args)
    return handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailward", description="Secure outbound SMTP gateway.")
    parser.add_argument("-c", "--config", metavar="FILE", help="config file (default: "
                        "$MAILWARD_CONFIG, ./mailward.yaml, /etc/mailward/config.yaml)")
    parser.add_argument("--version", action="version", version=f"mailward {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="serve in the foreground")
    run.add_argument("--role", choices=["delivery", "ingest-worker"], help=argparse.SUPPRESS)  # children
    run.set_defaults(handler=cmd_run)
    check = commands.add_parser("check-config", help="validate config and policies")
    check.set_defaults(handler=cmd_check_config)

    policy = commands.add_parser("policy", help="try the DLP policies").add_subparsers(
        title="policy commands", metavar="ACTION", required=True)
    p_test = policy.add_parser("test", help="what policy does with a message file (a dry run)")
    p_test.add_argument("file", type=Path, metavar="FILE.eml")
    p_test.add_argument("--from", dest="sender", metavar="ADDRESS",
                        help="envelope sender (default: the From header)")
    p_test.add_argument("--to", dest="recipients", action="append", metavar="ADDRESS",
                        help="envelope recipient, repeatable (default: the To and Cc headers)")
    p_test.add_argument("--json", action="store_true", help="print one JSON object")
    p_test.set_defaults(handler=cmd_policy_test)

    tls = commands.add_parser("tls", help="recipient domains' TLS").add_subparsers(
        title="tls commands", metavar="ACTION", required=True)
    t_probe = tls.add_parser("probe", help="MX, STARTTLS, certificate, MTA-STS and DANE status")
    t_probe.add_argument("domain")
    t_probe.add_argument("--json", action="store_true", help="print one JSON object")
    t_probe.set_defaults(handler=cmd_tls_probe)

    portal = commands.add_parser("portal", help="the secure portal").add_subparsers(
        title="portal commands", metavar="ACTION", required=True)
    p_revoke = portal.add_parser("revoke", help="withdraw a portal message at once, for good")
    p_revoke.add_argument("message_id", metavar="ID")
    p_revoke.set_defaults(handler=cmd_portal_revoke)

    queue = commands.add_parser("queue", help="inspect and steer the spool").add_subparsers(
        title="queue commands", metavar="ACTION", required=True)
    q_list = queue.add_parser("list", help="list queued messages")
    q_list.add_argument("--state", choices=[s.value for s in QueueState])
    q_list.set_defaults(handler=cmd_queue_list)
    q_show = queue.add_parser("show", help="envelope and recipient status of one message")
    q_show.add_argument("queue_id")
    q_show.add_argument("--message", action="store_true",
                        help="print the decrypted message itself (it may hold PHI)")
    q_show.set_defaults(handler=cmd_queue_show)
    q_retry = queue.add_parser("retry", help="retry deferred messages now")
    q_retry.add_argument("queue_ids", nargs="*", metavar="ID")
    q_retry.add_argument("--all", action="store_true", help="every deferred message")
    q_retry.set_defaults(handler=cmd_queue_retry)
    for name, helptext in (("hold", "keep a message from delivery"),
                           ("release", "release a held message"),
                           ("delete", "delete a message for good")):
        action = queue.add_parser(name, help=helptext)
        action.add_argument("queue_ids", nargs="+", metavar="ID")
        action.set_defaults(handler=cmd_queue_change, action=name)
    q_reinject = queue.add_parser("reinject", help="hand queued mail to another node (to retire this one)")
    q_reinject.add_argument("queue_ids", nargs="*", metavar="ID")
    q_reinject.add_argument("--all", action="store_true", help="every message in incoming, deferred and hold")
    q_reinject.add_argument("--to", required=True, metavar="HOST:PORT", help="the other node's SMTP listener")
    q_reinject.set_defaults(handler=_lazy("gateway.delivery.commands", "cmd_queue_reinject"))
    for sub in (q_list, q_show, q_retry, q_reinject,
                *(queue.choices[n] for n in ("hold", "release", "delete"))):
        sub.add_argument("--json", action="store_true", help="print JSON")

    keygen = commands.add_parser("keygen", help="create keys").add_subparsers(
        title="key kinds", metavar="KIND", required=True)
    k_spool = keygen.add_parser("spool", help="the spool encryption key")
    k_spool.add_argument("--rotate", action="store_true",
                         help="add a new key in front; old keys stay to read older files")
    k_spool.set_defaults(handler=cmd_keygen_spool)
    k_dkim = keygen.add_parser("dkim", help="a DKIM signing key for a sender domain")
    k_dkim.add_argument("domain")
    k_dkim.add_argument("--selector", required=True, help="the DNS label, e.g. s1 or 2026-11")
    k_dkim.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                        help="rsa (2048 bit, read everywhere) or ed25519 (RFC 8463; sign with both)")
    k_dkim.add_argument("--bits", type=int, choices=(2048, 3072, 4096), default=2048)
    k_dkim.add_argument("--out", type=Path, help="key file (default: the key_file the config names "
                                                 "for this domain and selector, else "
                                                 "keys/dkim/DOMAIN.SELECTOR.pem beside the spool key)")
    k_dkim.set_defaults(handler=_lazy("gateway.dnscheck.commands", "cmd_keygen_dkim"), creates_keys=True)

    status = commands.add_parser("status", help="one screen: listeners, queue, recent failures, "
                                                "certificate and key ages")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=cmd_status)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        title="audit commands", metavar="ACTION", required=True)
    a_verify = audit.add_parser("verify", help="prove the hash chain intact; names the first bad record")
    a_verify.add_argument("--json", action="store_true", help="print one JSON object")
    a_search = audit.add_parser("search", help="records of messages by id, address or time")
    a_export = audit.add_parser("export", help="records of a period as JSON Lines or CSV, with a summary")
    for sub in (a_search, a_export):
        sub.add_argument("--since", help="from this time (ISO 8601, UTC unless it says)")
        sub.add_argument("--until", help="until this time (excluded)")
    a_search.add_argument("--queue-id")
    a_search.add_argument("--message-id")
    a_search.add_argument("--sender")
    a_search.add_argument("--recipient")
    a_export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    a_export.add_argument("--output", type=Path, help="write the records here (default: stdout)")
    a_verify.set_defaults(handler=_lazy("gateway.audit.commands", "cmd_verify"))
    a_search.set_defaults(handler=_lazy("gateway.audit.commands", "cmd_search"))
    a_export.set_defaults(handler=_lazy("gateway.audit.commands", "cmd_export"))

    suppress = commands.add_parser("suppress", help="the suppression list").add_subparsers(
        title="suppression commands", metavar="ACTION", required=True)
    s_add = suppress.add_parser("add", help="stop mail to an address")
    s_remove = suppress.add_parser("remove", help="allow mail to an address again")
    for sub in (s_add, s_remove):
        sub.add_argument("address")
        sub.add_argument("--domain", help="only for this sender domain (default: add for all; "
                                          "remove every entry)")
        sub.set_defaults(handler=_lazy("gateway.delivery.commands", "cmd_suppress"),
                         action=sub.prog.split()[-1])
    s_add.add_argument("--reason", help="e.g. legal, request (default: manual)")
    s_list = suppress.add_parser("list", help="entries, newest first")
    s_list.add_argument("--json", action="store_true")
    s_list.set_defaults(handler=_lazy("gateway.delivery.commands", "cmd_suppress"), action="list")
    pool = commands.add_parser("pool", help="egress IPs").add_subparsers(
        title="pool commands", metavar="ACTION", required=True)
    p_status = pool.add_parser("status", help="pools, IPs, their state and today's warm-up counts")
    p_status.add_argument("--json", action="store_true")
    p_status.set_defaults(handler=_lazy("gateway.delivery.commands", "cmd_pool"), action="status")
    for name, helptext in (("drain", "no new connections from this IP (open ones finish)"),
                           ("disable", "take this IP out of use"), ("enable", "use this IP again")):
        sub = pool.add_parser(name, help=helptext)
        sub.add_argument("address")
        sub.set_defaults(handler=_lazy("gateway.delivery.commands", "cmd_pool"), action=name)

    cluster = commands.add_parser("cluster", help="nodes sharing Redis and PostgreSQL").add_subparsers(
        title="cluster commands", metavar="ACTION", required=True)
    cluster.add_parser("init", help="create or migrate the cluster database's schema").set_defaults(
        handler=_lazy("gateway.state.commands", "cmd_cluster"), action="init")
    c_status = cluster.add_parser("status", help="live nodes, their queues and the shared limits")
    c_status.add_argument("--json", action="store_true")
    c_status.set_defaults(handler=_lazy("gateway.state.commands", "cmd_cluster"), action="status")

    console = commands.add_parser("console", help="the compliance console").add_subparsers(
        title="console commands", metavar="ACTION", required=True)
    console_user = console.add_parser("user", help="console users").add_subparsers(
        title="console user commands", metavar="ACTION", required=True)
    cu_add = console_user.add_parser("add", help="add a user, or change one's role and password")
    cu_add.add_argument("name")
    cu_add.add_argument("--role", choices=("viewer", "reviewer", "admin"), required=True)
    cu_add.add_argument("--password-file", type=Path, help="read the password from this file "
                                                           "(default: ask, or one line of stdin)")
    cu_remove = console_user.add_parser("remove", help="remove a user (signs them out)")
    cu_remove.add_argument("name")
    cu_list = console_user.add_parser("list", help="names, roles and second-factor state")
    for sub, verb in ((cu_add, "add"), (cu_remove, "remove"), (cu_list, "list")):
        sub.set_defaults(handler=_lazy("gateway.console.commands", "cmd_console_user"), action=verb)

    dns = commands.add_parser("dns", help="sender domains' DNS").add_subparsers(
        title="DNS commands", metavar="ACTION", required=True)
    d_check = dns.add_parser("check", help="SPF, DKIM, DMARC, MTA-STS and TLS-RPT records against "
                                           "the config")
    d_check.add_argument("domain")
    d_check.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                         help="an egress IP that must pass SPF (repeat for each)")
    d_check.add_argument("--json", action="store_true", help="print one JSON object")
    d_check.set_defaults(handler=_lazy("gateway.dnscheck.commands", "cmd_dns_check"))

    user = commands.add_parser("user", help="SMTP AUTH users").add_subparsers(
        title="user commands", metavar="ACTION", required=True)
    u_add = user.add_parser("add", help="add a user or change a password")
    u_add.add_argument("name")
    u_add.add_argument("--password-file", type=Path,
                       help="read the password from this file (default: prompt, or stdin)")
    u_add.set_defaults(handler=cmd_user_add)
    u_remove = user.add_parser("remove", help="remove a user")
    u_remove.add_argument("name")
    u_remove.set_defaults(handler=cmd_user_remove)
    user.add_parser("list", help="list user names").set_defaults(handler=cmd_user_list)

    api = commands.add_parser("api", help="the HTTP API").add_subparsers(
        title="api commands", metavar="WHAT", required=True)
    token = api.add_parser("token", help="bearer tokens").add_subparsers(
        title="token commands", metavar="ACTION", required=True)
    t_add = token.add_parser("add", help="make a token (printed once; only its hash is kept)")
    t_add.add_argument("name")
    t_add.add_argument("--scope", required=True, help="send, status or send,status")
    t_add.add_argument("--sender-domain", action="append", default=[], metavar="DOMAIN",
                       help="it may send only from this domain (repeatable; default any)")
    t_add.add_argument("--pool", action="append", default=[], help="it may name only this pool (repeatable)")
    t_add.set_defaults(handler=cmd_api_token, action="add")
    t_remove = token.add_parser("remove", help="withdraw a token")
    t_remove.add_argument("name")
    t_remove.set_defaults(handler=cmd_api_token, action="remove")
    token.add_parser("list", help="names and scopes").set_defaults(handler=cmd_api_token, action="list")
    _config_after_command(parser)
    return parser


def _config_after_command(parser: argparse.ArgumentParser) -> None:
    """`-c FILE` also after the command (``mailward check-config -c FILE``), as admins type it.
    SUPPRESS keeps a -c given before the command when none is given after it. argparse has no
    public way to walk its sub-commands, hence the private attributes."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                                 help="config file (as before the command)")
                _config_after_command(sub)


# -- run / check ------------------------------------------------------------------------------

def cmd_run(config: Config, args: argparse.Namespace) -> int:
    metrics_dir = None
    if args.role is None and config.metrics.listen is not None and \
            config.delivery.separate_process and not config.delivery.paused:
        # Both processes count into files here and /metrics adds them up (prometheus_client's
        # multiprocess mode); it must be set before prometheus_client is first imported.
        metrics_dir = tempfile.mkdtemp(prefix="mailward-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from gateway import app

    eventlog.setup(config.log_level, config.cluster.node_id)
    try:
        return asyncio.run(app.run(config, args.role))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from gateway import status

    found = status.collect(config)
    print(json.dumps(found, indent=1) if args.json else status.as_text(found))
    return EXIT_OK if all(listener["up"] for listener in found["listeners"]) else EXIT_FAIL


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    from gateway import certs
    from gateway.stages.dlp.stage import dlp_settings, policies_directory

    if config.tls.cert_file is not None:
        certs.server_context(config)  # certificate and key load, key file is private
    else:  # check-config writes nothing: the self-signed pair is made by `run`
        print(f"tls: no cert_file; `mailward run` makes a self-signed certificate in "
              f"{config.tls.selfsigned_dir} (clients that verify will refuse it)", file=sys.stderr)
    if config.spool.key_file.exists():
        SpoolKeyring.load(config.spool.key_file)
    policies = dlp_settings(config).policies  # raises ConfigErrors: FILE:LINE per problem
    print(f"{config.source or 'embedded defaults'}: OK")
    rules = sum(len(f.rules) for f in policies.files)
    where = policies_directory(config)
    if rules:
        print(f"{where}: OK ({len(policies.files)} policy files, {rules} rules)")
    else:
        print(f"{where}: warning: no DLP rules, messages will not be checked", file=sys.stderr)
    for warning in policy_warnings(policies):
        print(f"{where}: WARNING: {warning}", file=sys.stderr)
    return EXIT_OK


def policy_warnings(policies: Policies) -> list[str]:
    """What an admin must hear before relying on the policy (check-config, loudly)."""
    warnings = []
    protects_all = any(f.protect == "all" for f in policies.files)
    encrypting = any(r.action == "encrypt" for f in policies.files for r in f.rules)
    if not protects_all and not encrypting:
        warnings.append("the policy protects NOTHING: no file says `protect: all` and no rule encrypts, "
                        "so every message leaves with opportunistic TLS at best")
    for policy in policies.files:
        if policy.notify_to is not None and policy.notify_to.lower().endswith("@example.com"):
            warnings.append(f"{policy.source}: notify_to is the placeholder {policy.notify_to}: "
                            "compliance notifications go nowhere until you set your own address")
    return warnings


def cmd_policy_test(config: Config, args: argparse.Namespace) -> int:
    from gateway.crypto.keyrings import Keyrings
    from gateway.stages.dlp import report
    from gateway.stages.dlp.scanner import scan_message
    from gateway.stages.dlp.stage import dlp_settings
    from gateway.stages.dlp.verdict import decide

    try:
        raw = args.file.read_bytes()
    except OSError as exc:
        raise MailwardError(f"{args.file}: {exc.strerror}") from None
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # .eml files often use bare LF
    if not report.looks_like_a_message(raw):
        raise MailwardError(f"{args.file}: not an email message (empty, binary, or no header fields "
                            "before the first blank line); give a .eml file as saved by a mail client")
    settings = dlp_settings(config)
    envelope = report.envelope_for(raw, args.sender, args.recipients)
    summary = scan_message(raw, settings.request)
    keyrings = Keyrings.load(config.keys)
    result = report.as_json(summary, decide(settings.policies, summary, envelope), envelope, keyrings,
                            policies=settings.policies, portal=config.portal.enabled)
    print(json.dumps(result, indent=1) if args.json else report.as_text(result))
    return EXIT_OK


def cmd_tls_probe(config: Config, args: argparse.Namespace) -> int:
    from gateway.transport import probe

    report = asyncio.run(probe.probe(config, args.domain))
    print(json.dumps(report, indent=1) if args.json else probe.as_text(report))
    # A domain whose MX lookup failed (NXDOMAIN, SERVFAIL, a timeout) was not probed at all.
    return EXIT_FAIL if report.get("error") else EXIT_OK


def cmd_portal_revoke(config: Config, args: argparse.Namespace) -> int:
    from gateway.portal.store import PortalError, open_store

    if not config.portal.enabled and not config.portal.key_file.exists():
        raise MailwardError("the secure portal is off (portal.enabled: false in "
                            f"{config.source or 'the embedded defaults'}): there is nothing to revoke")
    from gateway.state.cluster import open_database
    from gateway.state.pgportal import PgPortalRecords

    database = open_database(config)
    store = open_store(config.portal.store_dir, config.portal.key_file,
                       records=PgPortalRecords(database) if database is not None else None)
    try:
        existed = store.remove(args.message_id, "revoked")
    except PortalError as exc:
        raise MailwardError(f"{args.message_id}: {exc}") from None
    finally:
        if database is not None:
            database.close()
    if not existed:
        raise MailwardError(f"{args.message_id}: no such portal message (already revoked or expired?)")
    from gateway.audit.events import Audit, os_user

    Audit.open(config.audit).write_sync({"event": "portal_revoked", "queue_id": None,
                                         "portal_id": args.message_id, "user": os_user(), "by": "admin"})
    print(f"{args.message_id}: revoked by {os_user()}")
    return EXIT_OK


# -- queue ------------------------------------------------------------------------------------

def _spool(config: Config) -> Spool:
    if not config.spool.key_file.exists():
        raise MailwardError(f"{config.spool.key_file}: no spool key yet (start the gateway once, "
                            "or run: mailward keygen spool)")
    return open_spool(config.spool)


def _message_json(state: QueueState, message: QueuedMessage) -> dict[str, Any]:
    env = message.envelope
    return {
        "queue_id": message.queue_id, "state": state.value, "size": message.size,
        "received_at": _iso(message.received_at), "sender": env.sender,
        "message_id": message.message_id,
        "recipients": [{"address": r.address, "state": s.state.value, "attempts": s.attempts,
                        "dsn": s.dsn or None, "reply": s.reply or None}
                       for r, s in zip(env.recipients, message.statuses, strict=True)],
        "client": {"address": message.client.address, "listener": message.client.listener,
                   "relay": message.client.relay_reason, "tls": message.client.tls_version},
        "policy": {"action": message.policy.action, "rules": list(message.policy.rules),
                   "protected_recipients": [env.recipients[i].address for i in message.policy.protect]},
    }


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def cmd_queue_list(config: Config, args: argparse.Namespace) -> int:
    spool = _spool(config)
    states = (QueueState(args.state),) if args.state else tuple(QueueState)
    found = [_message_json(state, message) for state, message in spool.scan(states)]
    if args.json:
        print(json.dumps(found, indent=1))
        return EXIT_OK
    if not found:
        print("Mail queue is empty")
        return EXIT_OK
    print(f"{'QUEUE ID':<20} {'STATE':<9} {'SIZE':>9}  {'ARRIVAL':<25} SENDER")
    for item in found:
        print(f"{item['queue_id']:<20} {item['state']:<9} {item['size']:>9}  "
              f"{item['received_at']:<25} <{item['sender']}>")
        for rcpt in item["recipients"]:
            reply = f"  ({rcpt['reply']})" if rcpt["reply"] else ""
            print(f"{'':<22}{rcpt['state']:<10} <{rcpt['address']}>{reply}")
    print(f"-- {len(found)} message(s)")
    return EXIT_OK


def cmd_queue_show(config: Config, args: argparse.Namespace) -> int:
    spool = _spool(config)
    state = spool.locate(args.queue_id)
    if state is None:
        raise MailwardError(f"{args.queue_id}: no such message in the queue")
    if args.message:
        sys.stdout.buffer.write(spool.content(args.queue_id, state))
        return EXIT_OK
    item = _message_json(state, spool.load(args.queue_id, state))
    if args.json:
        print(json.dumps(item, indent=1))
        return EXIT_OK
    for key in ("queue_id", "state", "size", "received_at", "sender", "message_id"):
        print(f"{key}: {item[key] if item[key] not in (None, '') else '-'}")
    print(f"client: {item['client']['address']} via {item['client']['listener']} "
          f"(relay: {item['client']['relay']}, tls: {item['client']['tls'] or 'none'})")
    policy = item["policy"]
    print(f"policy: {policy['action']} rules={','.join(policy['rules']) or '-'} "
          f"protected={','.join(policy['protected_recipients']) or '-'}")
    for rcpt in item["recipients"]:
        print(f"recipient: <{rcpt['address']}> {rcpt['state']} attempts={rcpt['attempts']}"
              + (f" dsn={rcpt['dsn']} reply={rcpt['reply']!r}" if rcpt["reply"] else ""))
    return EXIT_OK


def _apply(ids: list[str], change: Callable[[str], str], as_json: bool) -> int:
    results, failed = [], False
    for queue_id in ids:
        try:
            results.append({"queue_id": queue_id, "ok": True, "result": change(queue_id)})
        except MailwardError as exc:
            failed = True
            results.append({"queue_id": queue_id, "ok": False, "error": str(exc)})
    for item in results if not as_json else ():
        print(f"{item['queue_id']}: {item['result']}" if item["ok"]
              else f"mailward: {item['error']}", file=sys.stdout if item["ok"] else sys.stderr)
    if as_json:
        print(json.dumps(results, indent=1))
    return EXIT_FAIL if failed else EXIT_OK


def cmd_queue_retry(config: Config, args: argparse.Namespace) -> int:
    spool = _spool(config)
    if args.all == bool(args.queue_ids):
        print("mailward: queue retry takes queue ids or --all", file=sys.stderr)
        return EXIT_USAGE
    ids = spool.ids(QueueState.DEFERRED) if args.all else args.queue_ids

    def retry(queue_id: str) -> str:
        spool.move(queue_id, QueueState.INCOMING, only_from=(QueueState.DEFERRED,))
        return "requeued for immediate delivery"

    return _apply_and_wake(spool, ids, retry, args.json)


def _apply_and_wake(spool: Spool, ids: list[str], change: Callable[[str], str], as_json: bool) -> int:
    """`_apply`, then tell a running scheduler that these messages are ready now."""
    status = _apply(ids, change, as_json)
    sender = WakeSender(spool.directory)
    sender.wake(ids)
    sender.close()
    return status


def cmd_queue_change(config: Config, args: argparse.Namespace) -> int:
    from gateway.audit.events import Audit, admin

    spool = _spool(config)
    audit = Audit.open(config.audit)

    def change(queue_id: str) -> str:
        if args.action == "hold":
            previous = spool.move(queue_id, QueueState.HOLD, only_from=(
                QueueState.INCOMING, QueueState.DEFERRED, QueueState.ACTIVE, QueueState.HOLD))
            outcome, event = f"held (was {previous.value})", "held"
        elif args.action == "release":
            spool.move(queue_id, QueueState.INCOMING, only_from=(QueueState.HOLD,))
            outcome, event = "released", "released"
        else:
            outcome, event = f"deleted (was {spool.remove(queue_id).value})", "deleted"
        audit.write_sync(admin(event, queue_id))
        return outcome

    if args.action == "release":
        return _apply_and_wake(spool, args.queue_ids, change, args.json)
    return _apply(args.queue_ids, change, args.json)


# -- keys and users ---------------------------------------------------------------------------

def cmd_keygen_spool(config: Config, args: argparse.Namespace) -> int:
    keyring = SpoolKeyring.create(config.spool.key_file, rotate=args.rotate)
    print(f"{config.spool.key_file}: key {keyring.current_id} is now current "
          f"({len(keyring.keys) - 1} older key(s) kept for reading)")
    return EXIT_OK


def read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        password_file: Path = args.password_file
        return password_file.read_text(encoding="utf-8").rstrip("\r\n")
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise MailwardError("the passwords differ")
    return first


def cmd_api_token(config: Config, args: argparse.Namespace) -> int:
    from gateway import apitokens
    from gateway.state.cluster import open_database
    from gateway.state.postgres import PgApiTokens

    path = config.api.tokens_file
    database = open_database(config)
    shared = PgApiTokens(database) if database is not None else None
    where = "the cluster database" if shared is not None else str(path)
    try:
        if args.action == "add":
            scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
            token = shared.add(args.name, scopes, args.sender_domain, args.pool) if shared is not None \
                else apitokens.add(path, args.name, scopes, args.sender_domain, args.pool)
            print(f"{args.name}: {token}")
            print(f"(kept in {where} as a hash only: copy the token now, it is not shown again)",
                  file=sys.stderr)
            return EXIT_OK
        if args.action == "remove":
            if not (shared.remove(args.name) if shared is not None else apitokens.remove(path, args.name)):
                raise MailwardError(f"{args.name}: no such token in {where}")
            print(f"{args.name}: removed (a running gateway refuses it from its next request)")
            return EXIT_OK
        tokens = shared.load() if shared is not None else apitokens.load(path) if path.exists() else []
    except ValueError as exc:
        raise MailwardError(str(exc)) from None
    finally:
        if database is not None:
            database.close()
    for entry in tokens:
        print(f"{entry.name}\t{','.join(sorted(entry.scopes))}\t"
              f"senders={','.join(entry.sender_domains) or 'any'}\tpools={','.join(entry.pools) or 'any'}")
    if not tokens:
        print(f"no tokens in {where}", file=sys.stderr)
    return EXIT_OK


def cmd_user_add(config: Config, args: argparse.Namespace) -> int:
    from gateway.ingress.users import UserStore

    try:
        UserStore(config.relay.users_file).add(args.name, read_password(args))
    except ValueError as exc:
        raise MailwardError(str(exc)) from None
    print(f"{args.name}: saved in {config.relay.users_file}")
    return EXIT_OK


def cmd_user_remove(config: Config, args: argparse.Namespace) -> int:
    from gateway.ingress.users import UserStore

    if not UserStore(config.relay.users_file).remove(args.name):
        raise MailwardError(f"{args.name}: no such user")
    print(f"{args.name}: removed")
    return EXIT_OK


def cmd_user_list(config: Config, args: argparse.Namespace) -> int:
    from gateway.ingress.users import UserStore

    names = UserStore(config.relay.users_file).names()
    for name in names:
        print(name)
    if not names:
        print(f"no users in {config.relay.users_file}", file=sys.stderr)
    return EXIT_OK
