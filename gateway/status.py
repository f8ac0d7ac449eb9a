"""``mailward status``: one screen for the admin at the console. Is it up, how full is the queue,
what failed lately, which certificates and keys are getting old.

It only reads: listener ports (a TCP connect), spool directories (no decryption), today's audit
file (the last failures: addresses and codes only), certificate and key files.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.audit.log import file_name
from gateway.config import Config, ListenerConfig
from gateway.spool.store import spool_usage
from gateway.state.limits import utc_day

KEY_AGE_WARNING = 365  # days; DKIM keys are commonly rotated yearly or more often
CERT_WARNING = 21  # days of validity left
_FAILURES = ("bounced", "deferred", "expired")


def _listener(listener: ListenerConfig, hostname: str) -> dict[str, Any]:
    """Up when Mailward answers there: the greeting is ours (220 ... Mailward ESMTP, or our 421
    when it is full). Another server on the port (Debian's Postfix on 25, say) is not us."""
    address = listener.address
    # A wildcard listener is reached on loopback.
    host = "127.0.0.1" if address in ("0.0.0.0", "") else "::1" if address == "::" else address  # noqa: S104
    entry: dict[str, Any] = {"listener": listener.label, "up": False}
    try:
        with socket.create_connection((host, listener.port), timeout=1.0) as connection:
            if listener.proxy_protocol:  # it greets only after a PROXY header from a balancer
                entry["up"] = True
                return entry
            greeting = connection.recv(512).decode("ascii", "replace").split("\r\n")[0]
    except OSError:
        return entry
    entry["up"] = (greeting.startswith("220 ") and "Mailward ESMTP" in greeting) or \
        (greeting.startswith("421 ") and hostname in greeting)
    if not entry["up"]:
        entry["note"] = f"another server answers: {greeting[:80]!r}"
    return entry


def queue_summary(spool_dir: Path, now: float) -> dict[str, dict[str, float]]:
    """Messages, bytes and the oldest message's age per spool state (also the status API's)."""
    return {state.value: {"messages": count, "bytes": size,
                          "oldest_age_seconds": round(now - arrived, 1) if arrived else 0.0}
            for state, (count, size, arrived) in spool_usage(spool_dir).items()}


def _last_failures(config: Config, now: float, limit: int = 5) -> list[dict[str, Any]]:
    path = config.audit.dir / file_name(utc_day(now))
    if not path.is_file():
        return []
    recent: deque[dict[str, Any]] = deque(maxlen=limit)
    with open(path, "rb") as handle:
        for line in handle:
            if any(f'"event":"{event}"'.encode() in line for event in _FAILURES):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                recent.append({k: record.get(k) for k in ("ts", "event", "queue_id", "recipient", "code",
                                                          "status", "class", "mx")})
    return list(recent)


def _certificate(path: Path | None, now: float) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        return {"file": str(path), "error": str(exc)}
    expires = certificate.not_valid_after_utc.timestamp()
    return {"file": str(path), "subject": certificate.subject.rfc4514_string(),
            "expires": datetime.datetime.fromtimestamp(expires, datetime.UTC).date().isoformat(),
            "days_left": int((expires - now) // 86400)}


def _key_age(path: Path, now: float) -> dict[str, Any]:
    try:
        age = int((now - path.stat().st_mtime) // 86400)
    except FileNotFoundError:
        return {"file": str(path), "missing": True}
    return {"file": str(path), "age_days": age}


def collect(config: Config, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    tls_cert = config.tls.cert_file or config.tls.selfsigned_dir / "selfsigned.crt"
    return {
        "hostname": config.hostname,
        "listeners": [_listener(listener, config.hostname) for listener in config.listeners],
        "queue": queue_summary(config.spool.dir, now),
        "last_failures": _last_failures(config, now),
        "certificates": [c for c in (_certificate(tls_cert, now),
                                     _certificate(config.portal.tls_cert_file, now)) if c is not None],
        "keys": {"spool": _key_age(config.spool.key_file, now),
                 "dkim": {f"{domain}:{key.selector}": _key_age(key.key_file, now)
                          for domain, settings in config.domains.items() for key in settings.dkim}},
    }


def as_text(status: dict[str, Any]) -> str:
    lines = [f"Mailward on {status['hostname']}", ""]
    lines.append("listeners  " + "  ".join(
        f"{entry['listener']} {'up' if entry['up'] else 'DOWN'}"
        + (f" ({entry['note']})" if entry.get("note") else "") for entry in status["listeners"]))
    queue = status["queue"]
    lines.append("queue      " + "  ".join(f"{state} {entry['messages']}" for state, entry in queue.items()))
    oldest = max((entry["oldest_age_seconds"] for state, entry in queue.items()
                  if state in ("incoming", "active", "deferred")), default=0.0)
    lines.append(f"oldest     {_age(oldest)} (waiting for delivery)")
    lines.append("")
    lines.append("last failures today" if status["last_failures"] else "no failures today")
    for failure in status["last_failures"]:
        lines.append(f"  {failure['ts']}  {failure['event']:<8} {failure['queue_id']}  "
                     f"{failure['recipient']}  {failure['code']} {failure['status']} "
                     f"{failure['class'] or ''}".rstrip())
    lines.append("")
    for certificate in status["certificates"]:
        if "error" in certificate:
            lines.append(f"certificate {certificate['file']}: unreadable: {certificate['error']}")
            continue
        warn = "  RENEW SOON" if certificate["days_left"] < CERT_WARNING else ""
        lines.append(f"certificate {certificate['subject']} expires {certificate['expires']} "
                     f"({certificate['days_left']} days){warn}")
    keys = status["keys"]
    lines.append(f"spool key  {_key_text(keys['spool'])}")
    for name, key in keys["dkim"].items():
        warn = "  consider rotating" if key.get("age_days", 0) > KEY_AGE_WARNING else ""
        lines.append(f"DKIM {name}  {_key_text(key)}{warn}")
    return "\n".join(lines)


def _key_text(key: dict[str, Any]) -> str:
    return "MISSING" if key.get("missing") else f"{key['age_days']} days old"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
