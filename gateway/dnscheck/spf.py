"""SPF evaluation (RFC 7208 check_host) for `mailward dns check`: does a domain's SPF record let
our egress IPs send, and how many DNS lookups does the record need?

Receivers stop after 10 lookups (include, a, mx, ptr, exists, redirect) and 2 void lookups and
then answer permerror, which DMARC treats as a failure. `check_host` evaluates as a receiver does;
`lookups_needed` walks every branch (an IP that matches nothing) without the limit, so a record
that only passes for early mechanisms, but breaks for the rest, is still caught.

Macros (§7) are expanded; ``ptr`` is counted but never matches (it is deprecated, §5.5).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_LIMIT = 10
_QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MACRO = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-", re.IGNORECASE)
_DUAL_CIDR = re.compile(r"^(.*?)(?:/(\d+))?(?://(\d+))?$")


class SpfDns(Protocol):
    """The lookups SPF needs; each returns [] for a name without such records (a void lookup)
    and raises `SpfTempError` when the DNS does not answer."""

    async def txt(self, name: str) -> list[str]: ...
    async def addresses(self, name: str) -> list[str]: ...
    async def exchangers(self, name: str) -> list[str]: ...


class SpfTempError(Exception):
    pass


class _Stop(Exception):
    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result, self.reason = result, reason


@dataclass
class SpfOutcome:
    result: Result
    reason: str  # what decided it, e.g. "ip4:192.0.2.0/24 in example.com"
    lookups: int = 0
    void_lookups: int = 0
    trail: list[str] = field(default_factory=list)  # domains whose records were read, in order


class _Evaluation:
    def __init__(self, dns: SpfDns, ip: IPAddress | None, sender: str, limit: int) -> None:
        self.dns, self.ip, self.sender, self.limit = dns, ip, sender, limit
        self.lookups = 0
        self.void = 0
        self.trail: list[str] = []

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > self.limit:
            raise _Stop("permerror", f"more than {self.limit} DNS lookups")

    def voided(self, found: list[str]) -> list[str]:
        if not found:
            self.void += 1
            if self.void > VOID_LIMIT and self.limit == LOOKUP_LIMIT:
                raise _Stop("permerror", f"more than {VOID_LIMIT} lookups found nothing")
        return found

    async def record(self, domain: str) -> str | None:
        try:
            records = [t for t in await self.dns.txt(domain)
                       if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        except SpfTempError as exc:
            raise _Stop("temperror", f"DNS lookup of {domain} failed: {exc}") from None
        if len(records) > 1:
            raise _Stop("permerror", f"{domain} publishes {len(records)} SPF records; one is allowed")
        self.trail.append(domain)
        return records[0] if records else None

    async def check(self, domain: str, depth: int = 0) -> tuple[Result, str]:
        if depth > 20:
            raise _Stop("permerror", "include/redirect loop")
        record = await self.record(domain)
        if record is None:
            return "none", f"no SPF record at {domain}"
        redirect: str | None = None
        terms = record.split()[1:]
        has_all = any(t.lower().lstrip("+-~?") == "all" for t in terms)
        for term in terms:
            name, eq, value = term.partition("=")
            if eq and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", name):
                if name.lower() == "redirect":
                    redirect = value
                continue  # exp= and unknown modifiers do not change the result
            qualifier = _QUALIFIERS.get(term[0])
            mechanism = term[1:] if qualifier else term
            if await self.matches(mechanism, domain, depth):
                return qualifier or "pass", f"{term} in {domain}"
        if redirect is not None and not has_all:  # an "all" leaves redirect unused (§6.1)
            self.count()
            target = self.expand(redirect, domain)
            result, reason = await self.check(target, depth + 1)
            if result == "none":
                raise _Stop("permerror", f"redirect to {target}, which has no SPF record")
            return result, reason
        return "neutral", f"nothing matched in {domain}"

    async def matches(self, mechanism: str, domain: str, depth: int) -> bool:
        kind, _, argument = mechanism.partition(":")
        kind = kind.lower()
        if "/" in kind:  # a/24 or mx//64 without a domain
            kind, slash, rest = kind.partition("/")
            argument = f"{argument}/{slash and rest}" if argument else f"/{rest}"
        try:
            if kind == "all":
                return self.ip is not None
            if kind in ("ip4", "ip6"):
                network = ipaddress.ip_network(argument, strict=False)
                return self.ip is not None and self.ip.version == network.version and self.ip in network
            if kind == "include":
                self.count()
                result, _ = await self.check(self.expand(argument, domain), depth + 1)
                if result in ("permerror", "none"):
                    raise _Stop("permerror", f"include:{argument} has no valid SPF record")
                if result == "temperror":
                    raise _Stop("temperror", f"include:{argument} could not be read")
                return result == "pass"
            if kind in ("a", "mx"):
                self.count()
                target, v4, v6 = _dual_cidr(argument)
                target = self.expand(target, domain) if target else domain
                hosts = [target]
                if kind == "mx":
                    hosts = self.voided(await self.dns.exchangers(target))
                    if len(hosts) > MX_LIMIT:
                        raise _Stop("permerror", f"{target} has more than {MX_LIMIT} MX hosts")
                for host in hosts:
                    addresses = await self.dns.addresses(host)
                    if kind == "a":
                        self.voided(addresses)
                    if self.ip is not None and any(_within(self.ip, a, v4, v6) for a in addresses):
                        return True
                return False
            if kind == "exists":
                self.count()
                found = self.voided(await self.dns.addresses(self.expand(argument, domain)))
                return self.ip is not None and bool(found)
            if kind == "ptr":
                self.count()
                return False
        except SpfTempError as exc:
            raise _Stop("temperror", f"{mechanism}: {exc}") from None
        except ValueError:
            raise _Stop("permerror", f"bad mechanism {mechanism!r} in {domain}") from None
        raise _Stop("permerror", f"unknown mechanism {mechanism!r} in {domain}")

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (§7.3) of a domain-spec."""
        local, _, sender_domain = self.sender.rpartition("@")
        values = {"s": self.sender, "l": local or "postmaster", "o": sender_domain or domain,
                  "d": domain, "i": _dotted(self.ip), "p": "unknown", "h": sender_domain or domain,
                  "v": "in-addr" if self.ip is None or self.ip.version == 4 else "ip6", "c": str(self.ip),
                  "r": "unknown", "t": "0"}

        def one(match: re.Match[str]) -> str:
            text = match.group(0)
            if text in ("%%", "%_", "%-"):
                return {"%%": "%", "%_": " ", "%-": "%20"}[text]
            letter, digits, reverse, delimiters = match.groups()
            parts = re.split("[" + re.escape(delimiters or ".") + "]", values[letter.lower()])
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits):] if int(digits) else parts
            return ".".join(parts)

        return _MACRO.sub(one, spec).rstrip(".")


def _dual_cidr(argument: str) -> tuple[str, int, int]:
    match = _DUAL_CIDR.match(argument)
    assert match is not None
    target, v4, v6 = match.groups()
    return target, int(v4) if v4 else 32, int(v6) if v6 else 128


def _within(ip: IPAddress, address: str, v4: int, v6: int) -> bool:
    network = ipaddress.ip_network(f"{address}/{v4 if ':' not in address else v6}", strict=False)
    return ip.version == network.version and ip in network


def _dotted(ip: IPAddress | None) -> str:
    if ip is None:  # walking the record for its lookups: no address to expand
        return "192.0.2.0"
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


async def check_host(dns: SpfDns, ip: str, domain: str, sender: str = "") -> SpfOutcome:
    """The SPF result for mail from `ip` with `domain` in MAIL FROM, as a receiver sees it."""
    evaluation = _Evaluation(dns, ipaddress.ip_address(ip), sender or f"postmaster@{domain}", LOOKUP_LIMIT)
    try:
        result, reason = await evaluation.check(domain.lower().rstrip("."))
    except _Stop as stop:
        result, reason = stop.result, stop.reason
    return SpfOutcome(result, reason, evaluation.lookups, evaluation.void, evaluation.trail)


async def lookups_needed(dns: SpfDns, domain: str, ceiling: int = 100) -> SpfOutcome:
    """Walk the whole record (nothing matches) counting DNS lookups, up to `ceiling`."""
    evaluation = _Evaluation(dns, None, f"postmaster@{domain}", ceiling)
    try:
        result, reason = await evaluation.check(domain.lower().rstrip("."))
    except _Stop as stop:
        result, reason = stop.result, stop.reason
    return SpfOutcome(result, reason, evaluation.lookups, evaluation.void, evaluation.trail)
