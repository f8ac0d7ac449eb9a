"""S/MIME: keys found and refused as they should be, and output that `openssl cms` decrypts to
the original MIME entity, with the subject inside and a neutral one outside."""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from gateway.crypto import smime
from tests.crypto.keys import openssl_decrypt, smime_identity
from tests.stages.dlp import builders as b

ADDRESS = "pat@example.org"


def message() -> bytes:
    return b"Received: from clinic by gw; Mon, 30 Nov 2026 10:00:00 +0000\r\n" + b.message(
        "Lab results: SSN 219-45-6789", subject="Lab results for Jane Roe", to=ADDRESS,
        attachments=[("labs.pdf", b.pdf(["Glucose 5.4"]), "application/pdf")])


def test_certificate_is_found_by_address_in_any_case(tmp_path: Path) -> None:
    smime_identity(tmp_path / "smime", ADDRESS)
    keyring = smime.SmimeKeyring(tmp_path / "smime")
    assert keyring.find("Pat@Example.ORG") is not None and keyring.find("other@example.org") is None


def test_unusable_certificates_are_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "smime"
    smime_identity(directory, "expired@example.org", days=-1, not_before_days=-10)
    smime_identity(directory, "future@example.org", not_before_days=5)
    smime_identity(directory, "small@example.org", key_size=1024)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha1", "-nodes", "-subj", "/CN=old",
                    "-addext", "subjectAltName=email:sha1@example.org", "-days", "30",
                    "-keyout", str(tmp_path / "sha1.key"), "-out", str(directory / "sha1.pem")],
                   check=True, capture_output=True)  # cryptography no longer signs with SHA-1
    smime_identity(directory, "tls@example.org", email_protection=False)
    revoked = smime_identity(directory, "revoked@example.org")
    (directory / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    fingerprint = revoked.certificate.fingerprint(hashes.SHA256()).hex()
    keyring = smime.SmimeKeyring(directory, frozenset({fingerprint}))
    for name in ("expired", "future", "small", "sha1", "tls", "revoked"):
        assert keyring.find(f"{name}@example.org") is None, name


def test_the_certificate_valid_longest_is_chosen(tmp_path: Path) -> None:
    smime_identity(tmp_path / "smime", ADDRESS, days=10)
    later = smime_identity(tmp_path / "smime" / "x", ADDRESS, days=300)
    (tmp_path / "smime" / "later.pem").write_bytes(later.cert_file.read_bytes())
    found = smime.SmimeKeyring(tmp_path / "smime").find(ADDRESS)
    assert found is not None and found.certificate == later.certificate


def test_openssl_decrypts_to_the_original_entity_with_the_subject_inside(tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "smime", ADDRESS)
    original = message()
    encrypted = smime.encrypt(original, identity.certificate, "Secure message")
    outer = email.message_from_bytes(encrypted, policy=email.policy.default)
    assert outer["Subject"] == "Secure message" and outer.get_content_type() == "application/pkcs7-mime"
    assert outer["Received"] is not None and outer["To"] == ADDRESS
    assert b"219-45-6789" not in encrypted and b"Jane Roe" not in encrypted
    inner = email.message_from_bytes(openssl_decrypt(identity, encrypted, tmp_path),
                                     policy=email.policy.default)
    assert inner["Subject"] == "Lab results for Jane Roe"
    assert inner.get_content_type() == "multipart/mixed"
    assert inner.get_param("protected-headers") == "v1"
    parts = [part.get_content_type() for part in inner.iter_parts()]
    assert parts == ["text/plain", "application/pdf"]
    original_parts = email.message_from_bytes(original, policy=email.policy.default)
    assert [p.get_payload(decode=True) for p in inner.iter_parts()] == \
        [p.get_payload(decode=True) for p in original_parts.iter_parts()]


def test_content_is_aes256_cbc_for_an_rsa_recipient(tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "smime", ADDRESS)
    encrypted = smime.encrypt(message(), identity.certificate, "Secure message")
    source = tmp_path / "e.eml"
    source.write_bytes(encrypted)
    dump = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-in", str(source)],
                          capture_output=True, check=True, text=True).stdout
    assert "aes-256-cbc" in dump and "rsaEncryption" in dump


def test_a_message_without_mime_headers_becomes_text_plain_inside(tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "smime", ADDRESS)
    plain = b"From: a@example.com\r\nTo: pat@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
    inner = openssl_decrypt(identity, smime.encrypt(plain, identity.certificate, "Secure"), tmp_path)
    assert inner.startswith(b"Content-Type: text/plain; charset=us-ascii;")
    assert inner.endswith(b"\r\n\r\nhello\r\n")
    assert datetime.datetime.now(datetime.UTC) < identity.certificate.not_valid_after_utc


def test_gcm_output_is_auth_enveloped_data_that_openssl_decrypts(tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "smime", ADDRESS)
    original = message()
    encrypted = smime.encrypt_gcm(original, identity.certificate, "Secure message")
    outer = email.message_from_bytes(encrypted, policy=email.policy.default)
    assert outer.get_param("smime-type") == "authEnveloped-data"
    source = tmp_path / "gcm.eml"
    source.write_bytes(encrypted)
    dump = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-in", str(source)],
                          capture_output=True, check=True, text=True).stdout
    assert "id-smime-ct-authEnvelopedData" in dump and "aes-256-gcm" in dump and "rsaesOaep" in dump
    decrypted = openssl_decrypt(identity, encrypted, tmp_path)
    inner = email.message_from_bytes(decrypted, policy=email.policy.default)
    assert inner["Subject"] == "Lab results for Jane Roe"


def test_tampered_gcm_ciphertext_is_refused_by_openssl(tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "smime", ADDRESS)
    encrypted = smime.encrypt_gcm(message(), identity.certificate, "Secure message")
    head, _, body = encrypted.partition(b"\r\n\r\n")
    der = bytearray(base64.b64decode(body))
    der[-40] ^= 0x01  # inside the ciphertext
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    with pytest.raises(subprocess.CalledProcessError):
        openssl_decrypt(identity, tampered, tmp_path)
