"""Name resolution for every part that looks names up (delivery, TLS policy, key discovery, the
DNS check), below all of them. Where to deliver a recipient domain: MX resolution (RFC 5321 §5.1,
null MX RFC 7505); the TLSA records DANE checks against (`TlsaRecord`); `DnsResolver`, the same
DNS settings for HTTPS fetches (MTA-STS policies, WKD keys, TLS reports).

`MxResolver.destinations(domain)` returns the hosts to try, in order: MX records by preference,
shuffled among equal preferences (spreading load as RFC 5321 asks); the domain itself when it has
no MX but has an address (implicit MX); a `delivery.routes` override before any DNS. Each host
comes with its addresses. dnspython follows CNAME chains itself.

dnspython's exceptions never leave this module: they become `Permanent` (NXDOMAIN, null MX, no
address at all) or `Temporary` (SERVFAIL, timeouts, no answer from any nameserver), which the
delivery code turns into a bounce or a deferral. Answers are cached for their TTL.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.typedyaml import HostPort

MAX_MX_HOSTS = 10  # more is a misconfiguration or an attack; Postfix stops at 5 by default
MIN_CACHE_TTL, MAX_CACHE_TTL = 5.0, 3600.0


class ResolutionError(Exception):
    """Base of what resolution reports; `status` is the enhanced status code for the DSN."""

    status = "4.4.3"

    def __init__(self, domain: str, reason: str) -> None:
        super().__init__(f"{domain}: {reason}")
        self.domain = domain
        self.reason = reason


class Permanent(ResolutionError):
    status = "5.1.2"


class Temporary(ResolutionError):
    status = "4.4.3"


@dataclass(frozen=True)
class Destination:
    """One host to try, with its addresses (IPv4 first) and the port to connect to."""

    host: str
    addresses: tuple[str, ...]
    port: int
    preference: int = 0


class MxResolver:
    def __init__(self, nameservers: tuple[HostPort, ...], smtp_port: int,
                 routes: Mapping[str, HostPort], *, timeout: float = 5.0,
                 min_cache_ttl: float = MIN_CACHE_TTL) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [ns.host for ns in nameservers]
            self._resolver.port = nameservers[0].port
        self._resolver.lifetime = timeout
        # Ask for DNSSEC (DO) and for the resolver's verdict (AD, RFC 6840 §5.7): TLSA records
        # count only when a validating resolver vouches for them.
        self._resolver.use_edns(0, dns.flags.DO, 1232)
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._smtp_port = smtp_port
        self._routes = {domain.lower().rstrip("."): target for domain, target in routes.items()}
        self._cache: dict[tuple[str, str], tuple[float, list[tuple[int, str]] | list[str]]] = {}
        self._min_cache_ttl = min_cache_ttl  # an answer is kept at least this long, whatever its TTL

    async def destinations(self, domain: str) -> list[Destination]:
        """Hosts to try for `domain`, best first; raises Permanent or Temporary."""
        domain = domain.lower().rstrip(".")
        route = self._routes.get(domain)
        if route is not None:
            addresses = await self._addresses(route.host) if not _is_ip(route.host) else [route.host]
            return [Destination(route.host, tuple(addresses), route.port)]
        exchangers = await self._mx(domain)
        if exchangers == [(0, "")]:
            raise Permanent(domain, "domain does not accept mail (null MX)")
        if not exchangers:
            # Implicit MX: the domain's own address records (RFC 5321 §5.1).
            addresses = await self._addresses(domain)
            if not addresses:
                raise Permanent(domain, "no MX and no address records")
            return [Destination(domain, tuple(addresses), self._smtp_port)]
        found = []
        for preference, host in _ordered(exchangers)[:MAX_MX_HOSTS]:
            try:
                addresses = await self._addresses(host)
            except ResolutionError:
                continue  # another MX may still work; if none does, the error below says so
            if addresses:
                found.append(Destination(host, tuple(addresses), self._smtp_port, preference))
        if not found:
            raise Temporary(domain, "no address for any MX host")
        return found

    async def addresses(self, host: str) -> list[str]:
        """A and AAAA addresses of `host` (cached); raises Permanent or Temporary."""
        return await self._addresses(host.lower().rstrip("."))

    async def txt(self, name: str) -> list[str]:
        """The TXT strings of `name` (each record's strings joined), [] when there are none.
        Cached for the answer's TTL, like every lookup here."""
        cached = self._cached(name, "TXT")
        if cached is not None:
            return cached  # type: ignore[return-value]
        try:
            answer = await self._query(name, "TXT")
        except Permanent:
            answer = None
        strings = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer or ()]
        self._store(name, "TXT", strings, answer)
        return strings

    async def exchangers(self, domain: str) -> list[str]:
        """The MX host names of `domain` by preference ([] for none or a null MX)."""
        return [host for _, host in sorted(await self._mx(domain.lower().rstrip("."))) if host]

    def routed(self, domain: str) -> bool:
        """Whether `domain` goes to a `delivery.routes` next hop instead of its MX hosts."""
        return domain.lower().rstrip(".") in self._routes

    async def tlsa(self, host: str, port: int) -> tuple[TlsaRecord, ...]:
        """The TLSA records of ``_PORT._tcp.HOST`` if the resolver authenticated them (AD bit);
        () when there are none or they are not authenticated (then DANE does not apply), or for an
        IP address. A failed lookup raises Temporary: RFC 7672 §2.2 makes the host unusable then,
        since a validating resolver fails exactly when an answer was tampered with."""
        if _is_ip(host):
            return ()
        name = f"_{port}._tcp.{host.lower().rstrip('.')}"
        cached = self._cached(name, "TLSA")
        if cached is not None:
            return tuple(cached)  # type: ignore[arg-type]
        answer = await self.authenticated(name, "TLSA")
        records = [TlsaRecord(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert))
                   for rdata in answer or ()]
        self._store(name, "TLSA", records, answer)  # type: ignore[arg-type]
        return tuple(records)

    async def authenticated(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer if the resolver authenticated it (AD bit), else None (also for none)."""
        try:
            answer = await self._query(name, rdtype)
        except Permanent:
            return None
        return answer if answer is not None and answer.response.flags & dns.flags.AD else None

    async def _mx(self, domain: str) -> list[tuple[int, str]]:
        cached = self._cached(domain, "MX")
        if cached is not None:
            return cached  # type: ignore[return-value]
        answer = await self._query(domain, "MX")
        records: list[tuple[int, str]] = []
        if answer is not None:
            for rdata in answer:
                host = rdata.exchange.to_text(omit_final_dot=True).lower()
                records.append((int(rdata.preference), "" if host in ("", ".") else host))
        self._store(domain, "MX", records, answer)
        return records

    async def _addresses(self, host: str) -> list[str]:
        cached = self._cached(host, "A+AAAA")
        if cached is not None:
            return cached  # type: ignore[return-value]
        addresses: list[str] = []
        answers = []
        for rdtype in ("A", "AAAA"):
            answer = await self._query(host, rdtype)
            if answer is not None:
                answers.append(answer)
                addresses.extend(rdata.address for rdata in answer)
        self._store(host, "A+AAAA", addresses, answers[0] if answers else None)
        return addresses

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None for "exists, but no such record"; errors mapped here only."""
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN:
            raise Permanent(name, "domain does not exist (NXDOMAIN)") from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise Temporary(name, f"DNS lookup of {rdtype} failed (SERVFAIL or timeout)") from None
        except dns.exception.DNSException as exc:
            raise Temporary(name, f"DNS error: {type(exc).__name__}") from None

    def _cached(self, name: str, kind: str) -> list[tuple[int, str]] | list[str] | None:
        entry = self._cache.get((name, kind))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def _store(self, name: str, kind: str, value: list[tuple[int, str]] | list[str],
               answer: dns.resolver.Answer | None) -> None:
        ttl = float(answer.rrset.ttl) if answer is not None and answer.rrset is not None else 60.0
        ttl = min(max(ttl, self._min_cache_ttl), MAX_CACHE_TTL)
        self._cache[(name, kind)] = (time.monotonic() + ttl, value)


def _ordered(exchangers: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """By preference; random order among equal preferences."""
    shuffled = list(exchangers)
    random.shuffle(shuffled)
    return sorted(shuffled, key=lambda item: item[0])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TlsaRecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (2, 3) and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def matches(self, certificate_der: bytes) -> bool:
        if self.selector == 0:
            selected = certificate_der
        else:
            certificate = x509.load_der_x509_certificate(certificate_der)
            selected = certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if self.mtype == 1:
            selected = hashlib.sha256(selected).digest()
        elif self.mtype == 2:
            selected = hashlib.sha512(selected).digest()
        return selected == self.data


class DnsResolver(AbstractResolver):
    """Host names for the policy fetch resolved through our own DNS settings."""

    def __init__(self, resolver: MxResolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = await self._resolver.addresses(host)
        except ResolutionError as exc:
            raise OSError(f"cannot resolve {host}: {exc.reason}") from None
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for address in addresses]

    async def close(self) -> None:
        return None
