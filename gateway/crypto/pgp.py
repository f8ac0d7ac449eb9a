"""PGP/MIME (RFC 3156) with pysequoia: recipient certificates from `keys.pgp_dir`.

Files hold armored or binary certificates, several per file; a certificate serves every address
in its user ids. Revoked and expired certificates, those on the revoked list (fingerprints, from
config) and those without a usable encryption subkey (a trial encryption at load fails) are
skipped with a log line. pysequoia's errors carry Rust backtraces; they never reach a log.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import pysequoia

from gateway import eventlog
from gateway.crypto import mime
from gateway.crypto.keyring import DirectoryKeyring
from gateway.errors import MailwardError

log = logging.getLogger("mailward.keys")
_SUFFIXES = (".asc", ".gpg", ".pgp", ".pub", ".key")


class PgpError(MailwardError):
    """pysequoia could not encrypt for this certificate."""


@dataclass(frozen=True)
class PgpCertificate:
    certificate: pysequoia.Cert
    addresses: frozenset[str]
    fingerprint: str
    expires: datetime.datetime | None
    source: str

    def valid_at(self, when: datetime.datetime) -> bool:
        return self.expires is None or when < self.expires


def addresses_of(certificate: pysequoia.Cert) -> frozenset[str]:
    found = set()
    for user_id in certificate.user_ids:
        _, address = email.utils.parseaddr(str(user_id))
        if "@" in address:
            found.add(address.lower())
    return frozenset(found)


class PgpKeyring(DirectoryKeyring[PgpCertificate]):
    """The OpenPGP certificates of a directory (armored or binary, several per file), by address."""

    def __init__(self, directory: Path, revoked: frozenset[str] = frozenset()) -> None:
        def read(path: Path) -> list[PgpCertificate]:
            certificates = pysequoia.Cert.split_bytes(path.read_bytes())
            return [entry for c in certificates if (entry := usable(c, revoked, str(path))) is not None]

        super().__init__(directory, "pgp", _SUFFIXES, read)


def usable(certificate: pysequoia.Cert, revoked: frozenset[str], source: str) -> PgpCertificate | None:
    """The certificate as a keyring entry, or None (logged) when it must not be used."""
    fingerprint = str(certificate.fingerprint).lower()
    expires = None
    try:
        reason = _refusal(certificate, fingerprint, revoked)
        expires = certificate.expiration if reason is None else None
    except RuntimeError as exc:  # sequoia's standard policy refuses it (weak algorithm, SHA-1 ...)
        reason = "refused by the OpenPGP policy: " + str(exc).split("\n\nStack backtrace")[0].replace(
            "\n\nCaused by:\n", " ").strip()[:160]
    if reason is not None:
        eventlog.event(log, "key_skipped", logging.WARNING, kind="pgp", file=source,
                       fingerprint=fingerprint, reason=reason)
        return None
    return PgpCertificate(certificate, addresses_of(certificate), fingerprint, expires, source)


def _refusal(certificate: pysequoia.Cert, fingerprint: str, revoked: frozenset[str]) -> str | None:
    if fingerprint in revoked:
        return "revoked by config"
    if certificate.is_revoked:
        return "revoked"
    if certificate.expiration is not None and certificate.expiration <= datetime.datetime.now(datetime.UTC):
        return "expired"
    weak = _weak_rsa_bits(certificate)
    if weak is not None:
        return f"RSA key of {weak} bits"
    if not _can_encrypt(certificate):
        return "no usable encryption key"
    return None


_RSA = ("RSAEncryptSign", "RSAEncrypt", "RSASign")


def _weak_rsa_bits(certificate: pysequoia.Cert) -> int | None:
    """The size of an RSA key or subkey under 2048 bits, if the certificate has one (the
    algorithm floor; sequoia's own policy already refuses SHA-1 and other broken algorithms)."""
    try:
        packets = pysequoia.packet.PacketPile.from_bytes(str(certificate).encode())
    except (RuntimeError, ValueError):
        return None
    for packet in packets:
        if str(packet.tag) not in ("Tag.PublicKey", "Tag.PublicSubkey"):
            continue
        if str(packet.key_algorithm).rpartition(".")[2] not in _RSA:
            continue
        body = packet.body
        if len(body) > 8 and body[0] == 4:  # v4: version, created (4), algorithm, MPI n (bit count)
            bits = int.from_bytes(body[6:8], "big")
            if bits < 2048:
                return bits
    return None


def _can_encrypt(certificate: pysequoia.Cert) -> bool:
    try:
        pysequoia.encrypt(b"", recipients=[certificate])
    except RuntimeError:
        return False
    return True


def encrypt(message: bytes, certificate: pysequoia.Cert, neutral_subject: str) -> bytes:
    """The message as PGP/MIME (multipart/encrypted) for `certificate`."""
    parts = mime.split(message)
    try:
        armored = pysequoia.encrypt(parts.inner, recipients=[certificate])
    except RuntimeError:
        raise PgpError("OpenPGP encryption failed for this certificate") from None
    boundary = f"=_mailward_{secrets.token_hex(12)}"
    body = (f"This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"
            f"--{boundary}\r\n"
            "Content-Type: application/pgp-encrypted\r\n"
            "Content-Description: PGP/MIME version identification\r\n\r\n"
            "Version: 1\r\n\r\n"
            f"--{boundary}\r\n"
            'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
            "Content-Description: OpenPGP encrypted message\r\n"
            'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n').encode()
    body += armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    body += f"\r\n--{boundary}--\r\n".encode()
    headers = [f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
               f'boundary="{boundary}"']
    return mime.assemble(parts, headers, body, neutral_subject)
