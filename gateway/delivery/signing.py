"""DKIM signing at delivery: the last change to a message, made to the exact bytes that are sent
(after encryption, for each copy), with the keys of the domain in its From header.

The signing domain is the From address's domain or the nearest parent listed in ``domains``
(mail.example.com signs as example.com, which DMARC's relaxed alignment accepts). Mail the
gateway writes itself (DSNs, notifications) comes from an address at ``hostname``, so it is
signed by the entry that covers the gateway's own name. Mail from a domain with no entry goes
out unsigned and is counted (`mailward_dkim_unsigned_total`); a configured key that cannot be
loaded stops start-up (config validation), never a silent unsigned send.

Keys are loaded once per (re)load. Bodies above `OFFLOAD_SIZE` are hashed in a thread so a large
message does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dkim as dkimpy

from gateway import eventlog, metrics
from gateway.config import DomainConfig
from gateway.crypto import dkim

log = logging.getLogger("mailward.dkim")

OFFLOAD_SIZE = 256 * 1024
_FROM = re.compile(rb"^From[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
# The common From forms, `addr@domain` and `Plain Name <addr@domain>` (no quotes, comments,
# groups or lists), read without the full address parser, which costs as much as the rest of
# preparing a signature.
_SIMPLE_FROM = re.compile(r"[ \t]*(?:[^\"(),:;<>@\\]*<)?[^\s\"(),:;<>@\\\[\]]+@([A-Za-z0-9.-]+)>?[ \t]*")


class SigningFailed(Exception):
    """The signature could not be made (a key or OpenSSL problem); the delivery is retried."""


class DkimSigner:
    def __init__(self, keys: Mapping[str, Sequence[dkim.SigningKey]]) -> None:
        self.keys = {domain.lower().rstrip("."): tuple(found) for domain, found in keys.items() if found}
        self._signature_counters: dict[str, list[Any]] = {}
        self._nearest: dict[str, str | None] = {}  # address domain -> signing domain, as met

    def _counters(self, domain: str, keys: Sequence[dkim.SigningKey]) -> list[Any]:
        """The signature counter of each key of `domain`, looked up once (a label lookup costs
        as much as a tenth of the Python part of a signature)."""
        found = self._signature_counters.get(domain)
        if found is None:
            found = self._signature_counters[domain] = [
                metrics.DKIM_SIGNATURES.labels(domain=domain, algorithm=key.algorithm) for key in keys]
        return found

    @classmethod
    def load(cls, domains: Mapping[str, DomainConfig]) -> DkimSigner:
        """The active keys of every domain (raises DkimKeyError; config validation checked them)."""
        return cls({domain: [dkim.SigningKey(domain.lower(), key.selector, key.algorithm,
                                             dkim.load_key(key.key_file, key.algorithm))
                             for key in config.dkim if key.active]
                    for domain, config in domains.items()})

    def signing_domain(self, address_domain: str) -> str | None:
        try:
            return self._nearest[address_domain]
        except KeyError:
            if len(self._nearest) >= 10_000:  # many sender domains: start again, not grow
                self._nearest.clear()
            found = self._nearest[address_domain] = nearest_domain(self.keys, address_domain)
            return found

    def covers(self, address_domain: str) -> bool:
        return self.signing_domain(address_domain) is not None

    async def sign(self, content: bytes, queue_id: str) -> tuple[bytes, str]:
        """`content` with CRLF line ends and the DKIM-Signature fields of its From domain on top,
        and what signed it ("domain:selector,selector"); unchanged (but for line ends) and ""
        when no configured domain covers it, unchanged when no domain has keys at all."""
        if not self.keys:
            return content, ""  # the SMTP client makes the line ends CRLF as it sends
        content = dkim.crlf(content)
        domain = self.signing_domain(from_domain(content) or "")
        if domain is None:
            metrics.DKIM_UNSIGNED.labels("no_domain").inc()
            return content, ""
        keys = self.keys[domain]
        try:
            if len(content) > OFFLOAD_SIZE:
                fields = await asyncio.get_running_loop().run_in_executor(None, dkim.sign, content, keys)
            else:
                fields = dkim.sign(content, keys)
        except dkimpy.MessageFormatError:
            # Not RFC 5322 (a header line without a colon): it cannot carry a signature that
            # verifies, and refusing it here would only delay the same result.
            metrics.DKIM_UNSIGNED.labels("malformed_header").inc()
            eventlog.event(log, "dkim_unsigned", logging.WARNING, queue_id=queue_id, domain=domain,
                           reason="malformed_header")
            return content, ""
        except Exception as exc:  # fail closed: the caller defers, nothing goes out unsigned
            metrics.DKIM_FAILURES.labels(domain=domain).inc()
            eventlog.event(log, "dkim_failed", logging.ERROR, queue_id=queue_id, domain=domain,
                           error=type(exc).__name__)
            raise SigningFailed(domain) from exc
        for counter in self._counters(domain, keys):
            counter.inc()
        return fields + content, f"{domain}:{','.join(key.selector for key in keys)}"


class SignedCopies:
    """The signed form of each distinct body of one delivery. The same bytes go to every
    recipient domain that is sent the message as it is, so they are signed once, not once per
    domain; encrypted and unsubscribe copies are bodies of their own."""

    def __init__(self, signer: DkimSigner) -> None:
        self.signer = signer
        self._signed: list[tuple[bytes, tuple[bytes, str]]] = []

    async def sign(self, content: bytes, queue_id: str) -> tuple[bytes, str]:
        for original, result in self._signed:
            if original is content:
                return result
        result = await self.signer.sign(content, queue_id)
        self._signed.append((content, result))
        return result


def nearest_domain(configured: Iterable[str], address_domain: str) -> str | None:
    """The configured domain that signs for `address_domain`: itself or its nearest parent
    (never a top-level domain alone)."""
    names = {name.lower().rstrip(".") for name in configured}
    labels = address_domain.lower().rstrip(".").split(".")
    for start in range(len(labels) - 1):
        candidate = ".".join(labels[start:])
        if candidate in names:
            return candidate
    return None


def from_domain(content: bytes) -> str | None:
    """The domain of the (first) From address in the header block, or None."""
    end = content.find(b"\r\n\r\n")
    match = _FROM.search(content, 0, end if end >= 0 else len(content))
    if match is None:
        return None
    value = match.group(1).decode("utf-8", "replace").replace("\r\n", "")
    simple = _SIMPLE_FROM.fullmatch(value)
    if simple is not None:
        return simple.group(1).lower() or None
    for _name, address in email.utils.getaddresses([value]):
        if "@" in address:
            return address.rpartition("@")[2].strip().rstrip(">").lower() or None
    return None
