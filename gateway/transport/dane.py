"""DANE for SMTP (RFC 7672): TLSA records of an MX host, trusted only when the configured
resolver says it validated them (the AD bit: it must be a local validating resolver, as for
Postfix), and matching of the server's certificate against them.

Supported, with the full certificate or its public key (selector 0 or 1), exact, SHA-256 or
SHA-512 (matching type 0, 1, 2):
- DANE-EE (usage 3): the server's own certificate matches; as RFC 7672 §3.1.1 says, its names
  and dates do not matter then.
- DANE-TA (usage 2): a certificate of the chain the server sent matches (the trust anchor, which
  RFC 7672 §3.1.2 says the server must send); the server's certificate must then chain to it by
  signature, be within its dates, and name the MX host (RFC 7672 §3.2.3).
PKIX usages 0 and 1 are unusable for SMTP: with only unusable records the connection must still be
encrypted (RFC 7672 §2.2), but is not authenticated.
"""

from __future__ import annotations

import datetime
import itertools

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.resolver import TlsaRecord


def authenticates(records: tuple[TlsaRecord, ...], chain: list[bytes], host: str) -> bool:
    """Whether the server's chain (DER, its own certificate first) is authenticated by a usable
    record: DANE-EE on the first certificate, or DANE-TA on a certificate the first chains to."""
    if not chain:
        return False
    if any(r.usage == 3 and r.usable and r.matches(chain[0]) for r in records):
        return True
    for position, candidate in enumerate(chain[1:], start=1):
        if any(r.usage == 2 and r.usable and r.matches(candidate) for r in records):
            return _chains_to(chain[:position + 1], host)
    return False


def _chains_to(chain: list[bytes], host: str) -> bool:
    """The first certificate is issued, link by link, by the last (the trust anchor), every one
    is within its dates, and the first names `host`."""
    certificates = [x509.load_der_x509_certificate(der) for der in chain]
    now = datetime.datetime.now(datetime.UTC)
    if any(not c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in certificates):
        return False
    try:
        for issued, issuer in itertools.pairwise(certificates):
            issued.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _names(certificates[0], host)


def _names(certificate: x509.Certificate, host: str) -> bool:
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return False
    host = host.lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in names):
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False
