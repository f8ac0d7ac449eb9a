"""DANE for SMTP (RFC 7672): TLSA records of an MX host, trusted only when the configured
resolver says it validated them (the AD bit: it must be a local validating resolver, as for
Postfix), and matching of the server's certificate against them.

Supported: DANE-EE (usage 3) with the full certificate or its public key (selector 0 or 1), exact,
SHA-256 or SHA-512 (matching type 0, 1, 2); as RFC 7672 §3.1.1 says, names and dates of the
certificate do not matter then. DANE-TA (usage 2) needs the server's whole chain, which Python's
ssl module (before 3.13) does not show; such records, and PKIX usages 0 and 1, are unusable: with
only unusable records the connection must still be encrypted (RFC 7672 §2.2), but is not
authenticated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class TlsaRecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage == 3 and self.selector in (0, 1) and self.mtype in (0, 1, 2)

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


def matches_any(records: tuple[TlsaRecord, ...], certificate_der: bytes) -> bool:
    return any(record.usable and record.matches(certificate_der) for record in records)
