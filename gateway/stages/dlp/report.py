"""`mailward policy test`: what policy would do with a message, as text or one JSON object.

This is a tool for the admin, who holds the message file anyway; still it prints what the gateway
would log: counts and places, rule names, actions. Never the matched values.
"""

from __future__ import annotations

import re
from collections import Counter
from email.utils import getaddresses
from typing import Any

from gateway.crypto.keyrings import Keyrings
from gateway.message import Envelope, Recipient
from gateway.stages.dlp.extract import parse
from gateway.stages.dlp.policy import Policies
from gateway.stages.dlp.scanner import ScanSummary
from gateway.stages.dlp.verdict import Verdict

_METHOD_WORDS = {"tls": "verified TLS if the MX offers it", "smime": "S/MIME", "pgp": "PGP/MIME",
                 "portal": "the secure portal"}
PORTAL_OFF = "the secure portal is off (portal.enabled): held for an admin"


def protection_plan(address: str, methods: tuple[str, ...], keyrings: Keyrings, *,
                    portal: bool = True) -> dict[str, Any]:
    """What delivery will try for a protected recipient, in order, and which keys are on file;
    whether the MX offers verified TLS is only known when delivering (`mailward tls probe`)."""
    keys = {"smime": keyrings.smime.find(address), "pgp": keyrings.pgp.find(address)}
    steps = []
    for method in methods:
        if method in keys:
            key = keys[method]
            steps.append({"method": method, "available": key is not None,
                          "key": key.fingerprint if key is not None else None})
        else:  # tls: only known when delivering; portal: there when it is enabled
            steps.append({"method": method, "available": None if method == "tls" else portal, "key": None})
    return {"required": True, "order": steps}


def _describe(plan: dict[str, Any]) -> str:
    if not plan["required"]:
        return "not required by policy (TLS when the receiver offers it)"
    words = []
    for step in plan["order"]:
        if step["method"] == "portal" and step["available"] is False:
            words.append(PORTAL_OFF)
        elif step["available"] is False:
            words.append(f"{step['method']} (no key on file)")
        elif step["key"]:
            words.append(f"{_METHOD_WORDS[step['method']]} (key {step['key'][:16]})")
        else:
            words.append(_METHOD_WORDS[step["method"]])
    return "required: " + ", else ".join(words)


_FIELD = re.compile(rb"^[!-9;-~]+:")


def looks_like_a_message(raw: bytes) -> bool:
    """At least one header field line first, and no NUL bytes in the header block."""
    head = raw[:64 * 1024].split(b"\r\n\r\n", 1)[0]
    return bool(head) and b"\0" not in head and _FIELD.match(head) is not None


def envelope_for(raw: bytes, sender: str | None, recipients: list[str] | None) -> Envelope:
    """The envelope to test with: the given addresses, else the message's From and To/Cc."""
    headers = parse(raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0] + b"\r\n\r\n")
    if sender is None:
        found = getaddresses([str(v) for v in headers.get_all("from", [])])
        sender = found[0][1] if found else ""
    if not recipients:
        values = [str(v) for name in ("to", "cc") for v in headers.get_all(name, [])]
        recipients = [address for _, address in getaddresses(values) if address] or ["recipient@invalid"]
    return Envelope(sender=sender, recipients=tuple(Recipient(address) for address in recipients))


def as_json(summary: ScanSummary, verdict: Verdict, envelope: Envelope, keyrings: Keyrings, *,
            policies: Policies | None = None, portal: bool = True) -> dict[str, Any]:
    places: dict[str, Counter[str]] = {}
    for location in summary.locations:
        places.setdefault(location.detector, Counter())[location.source] += 1
    return {
        "action": verdict.action,
        "phi": verdict.phi,
        "protect_modes": {f.source.rsplit("/", 1)[-1]: f.protect
                          for f in (policies.files if policies is not None else ())},
        "rules": {"matched": list(verdict.matched), "applied": list(verdict.applied)},
        "detectors": {name: {"count": count, "where": dict(places.get(name, {}))}
                      for name, count in sorted(summary.counts.items())},
        "facts": sorted(summary.facts),
        "limits_hit": sorted(summary.limits_hit),
        "subject_tags": sorted(summary.subject_tags),
        "attachments": summary.attachments,
        "headers": [f"{name}: {value}" for name, value in verdict.headers],
        "notify": list(verdict.notify),
        "reply": f"550 5.7.1 {verdict.reply}" if verdict.action == "block" else None,
        "error": verdict.error,
        "sender": envelope.sender,
        "recipients": [
            {"address": recipient.address, "action": verdict.recipient_actions[i],
             "protection": {**(protection_plan(recipient.address, verdict.methods, keyrings, portal=portal)
                               if i in verdict.protect else {"required": False, "order": []}),
                            "why": verdict.protection_reasons[i] if verdict.protection_reasons else ""}}
            for i, recipient in enumerate(envelope.recipients)],
        "scan_ms": round(summary.seconds * 1000, 1),
    }


def as_text(report: dict[str, Any]) -> str:
    detectors = ", ".join(
        f"{name}={entry['count']} ({', '.join(f'{k} {v}' for k, v in sorted(entry['where'].items()))})"
        for name, entry in report["detectors"].items())
    lines = [
        f"action:      {report['action']}" + (f"  ({report['reply']})" if report["reply"] else ""),
        f"PHI found:   {'yes' if report['phi'] else 'no'} (by the rules that test content)",
        "mode:        " + (", ".join(f"protect: {mode} ({name})"
                                     for name, mode in report["protect_modes"].items())
                           or "no policy files: nothing is protected"),
        f"rules:       applied: {', '.join(report['rules']['applied']) or '-'}; "
        f"matched: {', '.join(report['rules']['matched']) or '-'}",
        f"detectors:   {detectors or 'none'}",
        f"facts:       {', '.join(report['facts']) or 'none'}",
        f"limits hit:  {', '.join(report['limits_hit']) or 'none'}",
        f"headers:     {'; '.join(report['headers']) or 'none'}",
        f"notify:      {', '.join(report['notify']) or 'nobody'}",
        f"sender:      <{report['sender']}>",
        "recipients:",
    ]
    lines += [f"  {r['address']}: {r['action']}, protection {_describe(r['protection'])}"
              + (f"\n    why: {r['protection']['why']}" if r["protection"].get("why") else "")
              for r in report["recipients"]]
    if report["error"]:
        lines.append(f"scan error:  {report['error']} (the policy's on_error decided)")
    lines.append(f"scan time:   {report['scan_ms']} ms, {report['attachments']} attachment(s)")
    return "\n".join(lines)
