"""TLS for the SMTP listeners: the server context, client-certificate checks, self-signed pairs.

With no ``tls.cert_file`` the gateway makes a self-signed certificate for its hostname on first
start (SPEC §2), so STARTTLS is always offered; clients that verify will need the real one.
When ``relay.client_cert_subjects`` is set, clients are asked for a certificate (verified against
``tls.client_ca_file`` or the system store); how a verified one maps to relay permission is
`ingress.relay`'s business.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.keyfiles import read_secret, write_secret

SELF_SIGNED_DAYS = 825


# TLS 1.2 with forward secrecy and AEAD only (no CBC, no RSA key exchange); TLS 1.3 suites are
# all AEAD and not affected by this list.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def https_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The server context of an HTTPS listener of ours (portal, API, console)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    read_secret(key_file)  # refuses a key file others can read
    context.load_cert_chain(cert_file, key_file)
    return context


def server_context(config: Config) -> ssl.SSLContext:
    """The SSLContext every STARTTLS listener uses; raises ConfigError for unusable files."""
    cert_file, key_file = certificate_files(config)
    read_secret(key_file, allow_group=True)  # refuses a world-readable private key
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = (ssl.TLSVersion.TLSv1_3 if config.tls.min_version == "TLSv1.3"
                               else ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(TLS12_CIPHERS)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load certificate {cert_file} with key {key_file}: {exc}") from None
    listener_names = [name for listener in config.listeners if listener.relay is not None
                      for name in listener.relay.client_cert_subjects]
    if config.relay.client_cert_subjects or listener_names:
        # CERT_OPTIONAL: a client without a certificate still gets TLS (and may use AUTH);
        # one that presents a certificate must present one that verifies.
        context.verify_mode = ssl.CERT_OPTIONAL
        try:
            if config.tls.client_ca_file is not None:
                context.load_verify_locations(cafile=str(config.tls.client_ca_file))
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load client CA {config.tls.client_ca_file}: {exc}") from None
    return context


def certificate_files(config: Config) -> tuple[Path, Path]:
    """The configured pair, or the self-signed pair (made now if missing)."""
    if config.tls.cert_file is not None and config.tls.key_file is not None:
        return config.tls.cert_file, config.tls.key_file
    directory = config.tls.selfsigned_dir
    cert_file, key_file = directory / "selfsigned.crt", directory / "selfsigned.key"
    if not (cert_file.is_file() and key_file.is_file()):
        make_self_signed(config.hostname, cert_file, key_file)
    return cert_file, key_file


def make_self_signed(hostname: str, cert_file: Path, key_file: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):  # a hostname that is an IP address gets an IP SAN too
        alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    write_secret(key_file, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def peer_names(peercert: dict[str, object] | None) -> list[str]:
    """Subject CNs and DNS/email SANs of a *verified* peer certificate (ssl.getpeercert() form)."""
    if not peercert:
        return []
    names: list[str] = []
    for rdn in peercert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    for kind, value in peercert.get("subjectAltName", ()):  # type: ignore[attr-defined]
        if kind in ("DNS", "email"):
            names.append(value)
    return names
