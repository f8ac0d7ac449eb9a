"""What delivery has learned about recipient domains' TLS: per domain and MX host, whether
STARTTLS was offered, the protocol, whether the certificate verified (by name or DANE), and the
last failure. `mailward tls probe` shows it; protected delivery uses it to go straight to the
next protection method while a verified-TLS failure is recent (`delivery.tls_cache_ttl`), instead
of trying a connection that just failed.

Kept in memory and written to `delivery.tls_cache_file` (atomically, at most every few seconds
and at stop), so the CLI can read it and a restart keeps it. Host names and outcomes only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.durable import write_atomic

SAVE_INTERVAL = 5.0
MAX_DOMAINS = 10_000  # the oldest are forgotten beyond this


class LearnedTls:
    def __init__(self, path: Path | None, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self._domains: dict[str, dict[str, Any]] = load(path) if path is not None else {}
        self._saved = 0.0
        self._dirty = False

    def success(self, domain: str, host: str, *, version: str | None, verified: bool, dane: bool) -> None:
        entry = self._entry(domain, host)
        entry.update(starttls=version is not None, tls_version=version, verified=verified, dane=dane,
                     last_success=time.time())
        if verified:
            self._domains[domain].pop("verify_failure", None)
        self._changed()

    def failure(self, domain: str, host: str, reason: str, *, verify_required: bool) -> None:
        entry = self._entry(domain, host)
        entry.update(last_failure=time.time(), failure=reason[:200])
        if verify_required:
            self._domains[domain]["verify_failure"] = {"at": time.time(), "reason": reason[:200]}
        self._changed()

    def recent_verify_failure(self, domain: str) -> str | None:
        """Why verified TLS to `domain` failed, if it did within the ttl."""
        failure = self._domains.get(domain, {}).get("verify_failure")
        if failure is None or time.time() - failure["at"] > self.ttl:
            return None
        return f"{failure['reason']} ({time.time() - failure['at']:.0f}s ago)"

    def domain(self, domain: str) -> dict[str, Any]:
        return self._domains.get(domain, {})

    def _entry(self, domain: str, host: str) -> dict[str, Any]:
        if domain not in self._domains and len(self._domains) >= MAX_DOMAINS:
            oldest = min(self._domains, key=lambda d: self._domains[d].get("seen", 0))
            del self._domains[oldest]
        record = self._domains.setdefault(domain, {})
        record["seen"] = time.time()
        hosts: dict[str, dict[str, Any]] = record.setdefault("hosts", {})
        return hosts.setdefault(host, {})

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._saved >= SAVE_INTERVAL:
            self.save()

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self._domains).encode())
        self._dirty = False
        self._saved = time.monotonic()


def load(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
