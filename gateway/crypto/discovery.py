"""Finding recipient keys beyond the local directories, each source optional and cached:

- WKD (OpenPGP Web Key Directory, draft-koch-openpgp-webkey-service): the advanced URL
  ``https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL``, then the direct
  ``https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL``; certificate verified, no redirects,
  at most 256 KB.
- DNS OPENPGPKEY (RFC 7929) and SMIMEA (RFC 8162, usage 3 with the full certificate), used only
  when the configured resolver authenticated the answer (AD bit), as for DANE.

A discovered key passes the same checks as a local one (revocation, expiry, key size, algorithm
floor) and must name the address. Results, found or not, are cached for `keys.discovery_ttl`.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from dataclasses import dataclass, field

import aiohttp
import pysequoia
from cryptography import x509

from gateway import eventlog
from gateway.crypto import pgp, smime
from gateway.resolver import DnsResolver, MxResolver

log = logging.getLogger("mailward.keys")
MAX_KEY_BYTES = 256 * 1024
_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data: bytes) -> str:
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 5)
    return "".join(_ZBASE32[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


def wkd_urls(address: str, port: int = 443) -> list[str]:
    local, _, domain = address.rpartition("@")
    digest = zbase32(hashlib.sha1(local.lower().encode()).digest())  # noqa: S324 - the WKD name
    suffix = f"hu/{digest}?l={local}"
    return [f"https://openpgpkey.{domain}:{port}/.well-known/openpgpkey/{domain}/{suffix}",
            f"https://{domain}:{port}/.well-known/openpgpkey/{suffix}"]


def dns_key_name(address: str, kind: str) -> str:
    """RFC 7929/8162 owner name: SHA-256 of the local part, 28 octets in hex."""
    local, _, domain = address.rpartition("@")
    return f"{hashlib.sha256(local.encode()).hexdigest()[:56]}.{kind}.{domain}"


@dataclass
class KeyDiscovery:
    resolver: MxResolver
    ssl_context: ssl.SSLContext
    wkd: bool = False
    dns: bool = False
    revoked: frozenset[str] = frozenset()
    ttl: float = 3600.0
    port: int = 443
    _cache: dict[tuple[str, str], tuple[float, object]] = field(default_factory=dict)

    async def find_pgp(self, address: str) -> pgp.PgpCertificate | None:
        cached = self._cached("pgp", address)
        if cached is not False:
            return cached  # type: ignore[return-value]
        found = None
        if self.wkd:
            found = await self._wkd(address)
        if found is None and self.dns:
            found = await self._openpgpkey(address)
        self._cache[("pgp", address)] = (time.monotonic() + self.ttl, found)
        return found

    async def find_smime(self, address: str) -> smime.SmimeCertificate | None:
        if not self.dns:
            return None
        cached = self._cached("smime", address)
        if cached is not False:
            return cached  # type: ignore[return-value]
        found = None
        answer = await self.resolver.authenticated(dns_key_name(address, "_smimecert"), "SMIMEA")
        for rdata in answer or ():
            if (rdata.usage, rdata.selector, rdata.mtype) != (3, 0, 0):
                continue
            try:
                certificate = x509.load_der_x509_certificate(bytes(rdata.cert))
            except ValueError:
                continue
            entry = smime.usable(certificate, self.revoked, "dns:SMIMEA")
            if entry is not None and address.lower() in entry.addresses:
                found = entry
                break
        self._cache[("smime", address)] = (time.monotonic() + self.ttl, found)
        return found

    def _cached(self, kind: str, address: str) -> object:
        entry = self._cache.get((kind, address))
        return entry[1] if entry is not None and entry[0] > time.monotonic() else False

    async def _wkd(self, address: str) -> pgp.PgpCertificate | None:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, resolver=DnsResolver(self.resolver))
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=15)) as session:
            for url in wkd_urls(address, self.port):
                try:
                    async with session.get(url, allow_redirects=False) as response:
                        if response.status != 200:
                            continue
                        body = await response.content.read(MAX_KEY_BYTES + 1)
                except (OSError, aiohttp.ClientError, TimeoutError) as exc:
                    eventlog.event(log, "wkd_failed", logging.INFO, address=address, error=str(exc)[:120])
                    continue
                if len(body) <= MAX_KEY_BYTES:
                    found = self._pick(body, address, "wkd")
                    if found is not None:
                        return found
        return None

    async def _openpgpkey(self, address: str) -> pgp.PgpCertificate | None:
        answer = await self.resolver.authenticated(dns_key_name(address, "_openpgpkey"), "OPENPGPKEY")
        for rdata in answer or ():
            found = self._pick(bytes(rdata.key), address, "dns:OPENPGPKEY")
            if found is not None:
                return found
        return None

    def _pick(self, data: bytes, address: str, source: str) -> pgp.PgpCertificate | None:
        try:
            certificates = pysequoia.Cert.split_bytes(data)
        except (RuntimeError, ValueError):
            return None
        for certificate in certificates:
            entry = pgp.usable(certificate, self.revoked, source)
            if entry is not None and address.lower() in entry.addresses:
                eventlog.event(log, "key_discovered", address=address, source=source,
                               fingerprint=entry.fingerprint)
                return entry
        return None
