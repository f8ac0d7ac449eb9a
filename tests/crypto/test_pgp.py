"""PGP/MIME: keys made by GnuPG are found (or refused), and what we encrypt GnuPG decrypts to
the original MIME entity, in RFC 3156 structure, with the subject inside only."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from gateway.crypto import pgp
from tests.crypto.keys import GnuPG
from tests.stages.dlp import builders as b

ADDRESS = "pat@example.org"


def test_gpg_decrypts_rfc3156_output_to_the_original_entity(tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.make_key(ADDRESS)
    gnupg.export(ADDRESS, tmp_path / "pgp" / "pat.asc")
    found = pgp.PgpKeyring(tmp_path / "pgp").find("PAT@example.org")
    assert found is not None
    original = b.message("Results: SSN 219-45-6789", subject="Lab results for Jane Roe", to=ADDRESS)
    encrypted = pgp.encrypt(original, found.certificate, "Secure message")
    outer = email.message_from_bytes(encrypted, policy=email.policy.default)
    assert outer["Subject"] == "Secure message" and outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    control, payload = outer.iter_parts()
    assert control.get_content_type() == "application/pgp-encrypted"
    assert control.get_payload(decode=True).strip() == b"Version: 1"
    assert payload.get_content_type() == "application/octet-stream"
    assert b"219-45-6789" not in encrypted and b"Jane Roe" not in encrypted
    inner = email.message_from_bytes(gnupg.decrypt(payload.get_payload(decode=True)),
                                     policy=email.policy.default)
    assert inner["Subject"] == "Lab results for Jane Roe"
    assert inner.get_content().strip() == "Results: SSN 219-45-6789"


def test_several_user_ids_and_several_certificates_in_one_file(tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.make_key("a@example.org")
    gnupg.run("--quick-add-uid", "a@example.org", "Other Name <second@example.net>")
    gnupg.make_key("b@example.org")
    (tmp_path / "pgp").mkdir()
    (tmp_path / "pgp" / "all.asc").write_bytes(gnupg.run("--armor", "--export"))
    keyring = pgp.PgpKeyring(tmp_path / "pgp")
    assert len(keyring) == 2
    for address in ("a@example.org", "second@example.net", "b@example.org"):
        assert keyring.find(address) is not None, address


def test_expired_revoked_and_listed_keys_are_skipped(tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    for name in ("good", "revoked", "listed"):
        gnupg.make_key(f"{name}@example.org")
    # Made in 2020, valid for a day: long expired.
    gnupg.run("--faked-system-time", "20200101T000000", "--quick-gen-key",
              "Old <expired@example.org>", "default", "default", "1d")
    revoked = gnupg.fingerprint("revoked@example.org")
    certificate = (tmp_path / "gnupg" / "openpgp-revocs.d" / f"{revoked}.rev").read_bytes()
    gnupg.run("--import", data=certificate.replace(b":-----BEGIN", b"-----BEGIN"))
    for name in ("good", "revoked", "listed", "expired"):
        gnupg.export(f"{name}@example.org", tmp_path / "pgp" / f"{name}.asc")
    keyring = pgp.PgpKeyring(tmp_path / "pgp", frozenset({gnupg.fingerprint("listed@example.org").lower()}))
    assert keyring.find("good@example.org") is not None
    for name in ("revoked", "listed", "expired"):
        assert keyring.find(f"{name}@example.org") is None, name


def test_unreadable_key_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "pgp").mkdir()
    (tmp_path / "pgp" / "broken.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnope\n")
    assert len(pgp.PgpKeyring(tmp_path / "pgp")) == 0


def test_rsa_keys_under_2048_bits_are_refused(tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.run("--quick-gen-key", "Weak <weak@example.org>", "rsa1536", "default", "never")
    gnupg.run("--quick-add-key", gnupg.fingerprint("weak@example.org"), "rsa1536", "encr")
    gnupg.make_key("strong@example.org")
    for name in ("weak", "strong"):
        gnupg.export(f"{name}@example.org", tmp_path / "pgp" / f"{name}.asc")
    keyring = pgp.PgpKeyring(tmp_path / "pgp")
    assert keyring.find("weak@example.org") is None and keyring.find("strong@example.org") is not None
