"""What TLS each recipient domain needs: the admin's map (`delivery.tls_policy`, like Postfix's
smtp_tls_policy_maps), else the domain's MTA-STS policy (RFC 8461), else opportunistic TLS.

MTA-STS: the ``_mta-sts`` TXT record says a policy exists and its id; the policy itself is fetched
from ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` with the certificate verified (system
roots plus `delivery.ca_file`), no redirects, at most 64 KB, and cached for its max_age. It is
fetched again when the TXT id changes; a failed refresh keeps the cached policy (RFC 8461 §5.1),
so an attacker who blocks the fetch or strips the TXT record cannot downgrade a known policy.
The cache is kept in `delivery.mta_sts_cache_file` too (`StsCache`), so that this holds across a
restart (RFC 8461 §10): a policy stays in force for its max_age whatever the process did.
Mode ``enforce`` requires a verified certificate from an MX host that matches the policy's mx
patterns; ``testing`` and ``none`` only report.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import aiohttp

from gateway import eventlog
from gateway.durable import write_atomic
from gateway.resolver import Destination, DnsResolver, MxResolver, ResolutionError

log = logging.getLogger("mailward.tlspolicy")

AdminLevel = Literal["none", "may", "encrypt", "verify", "secure"]
MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # one year, RFC 8461 §3.2
TXT_RECHECK = 300.0  # seconds between checks of the TXT id while a policy is cached


@dataclass(frozen=True)
class TlsRequirement:
    """What TLS a destination needs. ``none``: no STARTTLS (an admin's choice for a broken peer);
    ``may``: STARTTLS if offered, any certificate, else plaintext; ``encrypt``: TLS required, any
    certificate; ``verify``: TLS with a certificate that chains to a trusted root and names the MX
    host (or one of `match_names`). `mx_patterns` (MTA-STS) limits which MX hosts may be used at
    all; `source` says where the requirement came from, for the logs."""

    level: Literal["none", "may", "encrypt", "verify"] = "may"
    match_names: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    source: str = ""
    policy_text: tuple[str, ...] = ()  # the MTA-STS policy's lines, for TLS reports

    def allows(self, host: str) -> bool:
        """Whether `host` matches `mx_patterns` (RFC 8461 §4.1: "*." covers one leftmost label)."""
        if not self.mx_patterns:
            return True
        host = host.lower().rstrip(".")
        for pattern in self.mx_patterns:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(frozen=True)
class StsPolicy:
    mode: Literal["enforce", "testing", "none"]
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""
    fetched: float = 0.0

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.max_age

    @property
    def lines(self) -> tuple[str, ...]:
        """The policy as the lines of its file (TLS reports quote it)."""
        return ("version: STSv1", f"mode: {self.mode}", *(f"mx: {mx}" for mx in self.mx),
                f"max_age: {self.max_age}")


def parse_policy(text: str) -> StsPolicy:
    """An RFC 8461 §3.2 policy body; ValueError says what is wrong."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a key: value line: {line[:40]!r}")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise ValueError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise ValueError(f"mode {mode!r} is not enforce, testing or none")
    max_age_text = (fields.get("max_age") or [""])[0]
    if not max_age_text.isdigit() or int(max_age_text) > MAX_AGE_LIMIT:
        raise ValueError("max_age is missing or out of range")
    mx = tuple(fields.get("mx", []))
    if mode != "none" and not mx:
        raise ValueError("no mx patterns")
    return StsPolicy(mode, mx, int(max_age_text))  # type: ignore[arg-type]


class StsCache:
    """MTA-STS policies by domain, in memory and in a file (rewritten atomically whenever a
    policy is stored: policies change rarely). Expired policies are dropped when read."""

    MAX_DOMAINS = 100_000

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._policies: dict[str, StsPolicy] = {}
        if path is not None:
            self._policies = self._load(path)

    @staticmethod
    def _load(path: Path) -> dict[str, StsPolicy]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            eventlog.event(log, "mta_sts_cache_unreadable", logging.WARNING, file=path, error=str(exc)[:200])
            return {}
        now, found = time.time(), {}
        for domain, fields in (data.items() if isinstance(data, dict) else ()):
            try:
                policy = StsPolicy(fields["mode"], tuple(fields["mx"]), int(fields["max_age"]),
                                   str(fields["policy_id"]), float(fields["fetched"]))
            except (KeyError, TypeError, ValueError):
                continue
            if policy.fresh(now):
                found[domain] = policy
        return found

    def get(self, domain: str) -> StsPolicy | None:
        return self._policies.get(domain)

    def put(self, domain: str, policy: StsPolicy) -> None:
        if domain not in self._policies and len(self._policies) >= self.MAX_DOMAINS:
            del self._policies[min(self._policies, key=lambda d: self._policies[d].fetched)]
        self._policies[domain] = policy
        if self.path is not None:
            now = time.time()
            kept = {d: asdict(p) for d, p in self._policies.items() if p.fresh(now)}
            write_atomic(self.path, json.dumps(kept).encode())


class MtaSts:
    def __init__(self, resolver: MxResolver, *, port: int = 443, ca_file: str | None = None,
                 timeout: float = 10.0, cache: StsCache | None = None,
                 txt_recheck: float = TXT_RECHECK) -> None:
        self._resolver = resolver
        self._port = port
        self._context = ssl.create_default_context()
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        if ca_file is not None:
            self._context.load_verify_locations(cafile=ca_file)
        self._timeout = timeout
        self._cache = cache if cache is not None else StsCache(None)  # kept across reloads and restarts
        self._checked: dict[str, float] = {}  # domain -> when the TXT id was last looked at
        self._txt_recheck = txt_recheck

    async def policy(self, domain: str) -> StsPolicy | None:
        """The domain's policy, from the cache while it is fresh and its id unchanged."""
        now = time.time()
        cached = self._cache.get(domain)
        if now - self._checked.get(domain, 0) < self._txt_recheck:  # looked at moments ago: no new query
            return cached if cached is not None and cached.fresh(now) else None
        self._checked[domain] = now
        try:
            policy_id = await self._txt_id(domain)
        except ResolutionError:
            policy_id = None
        if policy_id is None:
            return cached if cached is not None and cached.fresh(now) else None
        if cached is not None and cached.fresh(now) and cached.policy_id == policy_id:
            return cached
        try:
            fetched = await self.fetch(domain)
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
            eventlog.event(log, "mta_sts_fetch_failed", logging.WARNING, domain=domain,
                           error=str(exc)[:200], cached="yes" if cached else "no")
            return cached if cached is not None and cached.fresh(now) else None
        policy = StsPolicy(fetched.mode, fetched.mx, fetched.max_age, policy_id, now)
        self._cache.put(domain, policy)
        eventlog.event(log, "mta_sts_policy", domain=domain, mode=policy.mode, id=policy_id,
                       max_age=policy.max_age, mx=",".join(policy.mx))
        return policy

    async def _txt_id(self, domain: str) -> str | None:
        records = [r for r in await self._resolver.txt(f"_mta-sts.{domain}") if r.startswith("v=STSv1")]
        if len(records) != 1:
            return None  # none, or ambiguous: RFC 8461 §3.1 says treat as no policy
        fields = dict(part.strip().partition("=")[::2] for part in records[0].split(";") if "=" in part)
        policy_id = fields.get("id", "")
        return policy_id if policy_id.isalnum() and len(policy_id) <= 32 else None

    async def fetch(self, domain: str) -> StsPolicy:
        """GET the policy file; raises on anything but a 200 text/plain within the size limit."""
        url = f"https://mta-sts.{domain}:{self._port}/.well-known/mta-sts.txt"
        connector = aiohttp.TCPConnector(ssl=self._context, resolver=DnsResolver(self._resolver))
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"HTTP status {response.status}")
            if response.content_type != "text/plain":
                raise ValueError(f"content type {response.content_type}")
            body = await response.content.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise ValueError("policy larger than 64 KB")
        return parse_policy(body.decode("utf-8", "replace"))


class TlsPolicyMap:
    """The `TlsPolicy` of the delivery agent: admin map first, then MTA-STS."""

    def __init__(self, admin: Mapping[str, AdminLevel], mta_sts: MtaSts | None,
                 routed: frozenset[str] = frozenset()) -> None:
        self._admin = {domain.lower().rstrip("."): level for domain, level in admin.items()}
        self.mta_sts = mta_sts
        # Domains sent to a `delivery.routes` next hop: the admin chose that host, so the
        # domain's own MTA-STS policy (about its MX hosts) does not apply; the map still does.
        self._routed = frozenset(domain.lower().rstrip(".") for domain in routed)

    def admin_level(self, domain: str) -> AdminLevel | None:
        """The map's entry for `domain`, or for a parent written ".parent.example"."""
        if domain in self._admin:
            return self._admin[domain]
        labels = domain.split(".")
        for i in range(1, len(labels)):
            parent = "." + ".".join(labels[i:])
            if parent in self._admin:
                return self._admin[parent]
        return None

    async def requirement(self, domain: str, destinations: Sequence[Destination]) -> TlsRequirement:
        domain = domain.lower().rstrip(".")
        level = self.admin_level(domain)
        if level == "secure":  # Postfix "secure": verified, names under the next-hop domain
            return TlsRequirement("verify", mx_patterns=(domain, f"*.{domain}"), source="policy-map")
        if level is not None:
            return TlsRequirement(level, source="policy-map")
        if self.mta_sts is not None and domain not in self._routed:
            policy = await self.mta_sts.policy(domain)
            if policy is not None and policy.mode in ("enforce", "testing"):
                # "testing" only reports (RFC 8461 §5): opportunistic, but counted as "sts".
                return TlsRequirement("verify" if policy.mode == "enforce" else "may",
                                      mx_patterns=policy.mx if policy.mode == "enforce" else (),
                                      source="mta-sts", policy_text=policy.lines)
        return TlsRequirement("may")
