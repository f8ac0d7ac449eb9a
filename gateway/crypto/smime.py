"""S/MIME (RFC 8551): recipient certificates from `keys.smime_dir`, and EnvelopedData with
AES-256-CBC through cryptography's PKCS7 support.

A certificate is usable for an address when it names it (rfc822Name in the subject alternative
names, or emailAddress in the subject), is within its validity period, has an RSA key of at least
2048 bits, is not signed with SHA-1 or MD5, allows key encipherment and e-mail protection where it
says what it is for, and is not on the revoked list (SHA-256 fingerprints, from config). Of several,
the one valid longest is used. Files that cannot be read are reported, never fatal.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import eventlog
from gateway.crypto import mime
from gateway.crypto.keyring import DirectoryKeyring

log = logging.getLogger("mailward.keys")
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)
CONTENT_HEADERS = [
    'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="smime.p7m"',
]


@dataclass(frozen=True)
class SmimeCertificate:
    certificate: x509.Certificate
    addresses: frozenset[str]
    fingerprint: str  # SHA-256, hex
    source: str

    @property
    def expires(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def valid_at(self, when: datetime.datetime) -> bool:
        return self.certificate.not_valid_before_utc <= when <= self.certificate.not_valid_after_utc


def unusable_reason(certificate: x509.Certificate) -> str | None:
    """Why a certificate must not be used for encryption, or None."""
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return "not an RSA key"
    if key.key_size < 2048:
        return f"RSA key of {key.key_size} bits"
    if isinstance(certificate.signature_hash_algorithm, _WEAK_HASHES):
        return f"signed with {certificate.signature_hash_algorithm.name}"
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_encipherment:
            return "key usage does not allow key encipherment"
    except x509.ExtensionNotFound:
        pass
    try:
        purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in purposes and \
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in purposes:
            return "extended key usage does not include e-mail protection"
    except x509.ExtensionNotFound:
        pass
    return None


def usable(certificate: x509.Certificate, revoked: frozenset[str], source: str) -> SmimeCertificate | None:
    """The certificate as a keyring entry, or None (logged) when it must not be used."""
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    reason = "revoked by config" if fingerprint in revoked else unusable_reason(certificate)
    if reason is not None:
        eventlog.event(log, "key_skipped", logging.WARNING, kind="smime", file=source,
                       fingerprint=fingerprint, reason=reason)
        return None
    return SmimeCertificate(certificate, addresses_of(certificate), fingerprint, source)


def addresses_of(certificate: x509.Certificate) -> frozenset[str]:
    found = {attribute.value for attribute in certificate.subject.get_attributes_for_oid(
        NameOID.EMAIL_ADDRESS) if isinstance(attribute.value, str)}
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.update(names.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    return frozenset(address.strip().lower() for address in found)


class SmimeKeyring(DirectoryKeyring[SmimeCertificate]):
    """The certificates of a directory (PEM, several per file, or DER), by address."""

    def __init__(self, directory: Path, revoked: frozenset[str] = frozenset()) -> None:
        def read(path: Path) -> list[SmimeCertificate]:
            data = path.read_bytes()
            certificates = (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                            else [x509.load_der_x509_certificate(data)])
            return [entry for c in certificates if (entry := usable(c, revoked, str(path))) is not None]

        super().__init__(directory, "smime", (".pem", ".crt", ".cer", ".der"), read)


def encrypt(message: bytes, certificate: x509.Certificate, neutral_subject: str) -> bytes:
    """The message as S/MIME EnvelopedData for `certificate` (AES-256-CBC, RSA key transport)."""
    parts = mime.split(message)
    enveloped = (pkcs7.PKCS7EnvelopeBuilder().set_data(parts.inner).add_recipient(certificate)
                 .set_content_encryption_algorithm(algorithms.AES256)
                 .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    return mime.assemble(parts, CONTENT_HEADERS, mime.base64_lines(enveloped), neutral_subject)


@functools.lru_cache(maxsize=256)
def _issuer_serial(certificate: x509.Certificate) -> bytes:
    """The recipient identifier, DER; built once per certificate (asn1crypto is slow to build)."""
    return bytes(cms.IssuerAndSerialNumber({
        "issuer": asn1_x509.Name.load(certificate.issuer.public_bytes()),
        "serial_number": certificate.serial_number}).dump())


_OAEP_SHA256 = cms.KeyEncryptionAlgorithm({
    "algorithm": "rsaes_oaep",
    "parameters": algos.RSAESOAEPParams({
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}}})}).dump()


class _GcmParameters(core.Sequence):  # type: ignore[misc]  # untyped base
    """RFC 5084 GCMParameters (asn1crypto knows the algorithm but not its parameters)."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("aes_nonce", core.OctetString), ("aes_icvlen", core.Integer, {"default": 12})]


def encrypt_gcm(message: bytes, certificate: x509.Certificate, neutral_subject: str) -> bytes:
    """The message as AuthEnvelopedData (RFC 5083) with AES-256-GCM (RFC 5084), for recipients
    known to read it: authenticated encryption, so a changed ciphertext is detected. The content
    key is wrapped for the certificate's RSA key with RSAES-OAEP (SHA-256)."""
    parts = mime.split(message)
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, parts.inner, None)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)  # unusable_reason() allows RSA only
    wrapped = public_key.encrypt(key, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                  algorithm=hashes.SHA256(), label=None))
    recipient = cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": cms.RecipientIdentifier(name="issuer_and_serial_number",
                                       value=cms.IssuerAndSerialNumber.load(_issuer_serial(certificate))),
        "key_encryption_algorithm": cms.KeyEncryptionAlgorithm.load(_OAEP_SHA256),
        "encrypted_key": wrapped}))
    content_algorithm = algos.EncryptionAlgorithm({
        "algorithm": "aes256_gcm", "parameters": _GcmParameters({"aes_nonce": nonce, "aes_icvlen": 16})})
    enveloped = cms.AuthEnvelopedData({
        "version": "v0", "recipient_infos": [recipient],
        "auth_encrypted_content_info": {"content_type": "data",
                                        "content_encryption_algorithm": content_algorithm,
                                        "encrypted_content": ciphertext},
        "mac": tag})
    info = cms.ContentInfo({"content_type": "authenticated_enveloped_data", "content": enveloped})
    headers = [h.replace("smime-type=enveloped-data", "smime-type=authEnveloped-data")
               for h in CONTENT_HEADERS]
    return mime.assemble(parts, headers, mime.base64_lines(info.dump()), neutral_subject)
