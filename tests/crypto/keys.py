"""Recipient keys for tests: S/MIME certificates made with cryptography, OpenPGP keys made by
GnuPG itself (so decryption with `gpg` is a real, independent peer)."""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SmimeIdentity:
    cert_file: Path
    key_file: Path
    certificate: x509.Certificate


def smime_identity(directory: Path, address: str, *, days: int = 30, key_size: int = 2048,
                   not_before_days: int = -1, email_protection: bool = True) -> SmimeIdentity:
    """A self-signed recipient certificate for `address` (rfc822Name), and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    purposes = [ExtendedKeyUsageOID.EMAIL_PROTECTION if email_protection else ExtendedKeyUsageOID.SERVER_AUTH]
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=not_before_days))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    stem = address.replace("@", "_at_")
    cert_file, key_file = directory / f"{stem}.pem", directory.parent / f"{stem}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return SmimeIdentity(cert_file, key_file, certificate)


def openssl_decrypt(identity: SmimeIdentity, message: bytes, workdir: Path) -> bytes:
    """`openssl cms -decrypt` of an S/MIME message: the inner MIME entity."""
    source = workdir / "smime-in.eml"
    source.write_bytes(message)
    result = subprocess.run(["openssl", "cms", "-decrypt", "-in", str(source), "-recip",
                             str(identity.cert_file), "-inkey", str(identity.key_file)],
                            capture_output=True, check=True, timeout=30)
    return result.stdout


class GnuPG:
    """A throwaway GnuPG home: make keys, export them, decrypt."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        self.env = {**os.environ, "GNUPGHOME": str(home)}

    def run(self, *args: str, data: bytes | None = None) -> bytes:
        result = subprocess.run(["gpg", "--batch", "--yes", "--pinentry-mode", "loopback",
                                 "--passphrase", "", *args], input=data, env=self.env,
                                capture_output=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"gpg {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def make_key(self, address: str, *, expire: str = "never", algorithm: str = "default") -> None:
        """RSA-3072 by default; "future-default" gives a small Curve25519 key (fits a DNS answer)."""
        self.run("--quick-gen-key", f"Test Recipient <{address}>", algorithm, "default", expire)

    def export(self, address: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.run("--armor", "--export", address))

    def fingerprint(self, address: str) -> str:
        """The primary key's fingerprint for `address`."""
        for line in self.run("--with-colons", "--list-keys", address).splitlines():
            if line.startswith(b"fpr:"):
                return line.split(b":")[9].decode()
        raise AssertionError(f"no key for {address}")

    def decrypt(self, data: bytes) -> bytes:
        return self.run("--decrypt", data=data)
