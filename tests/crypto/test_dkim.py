"""DKIM keys and signatures as pure logic: header lists, key checks, the signing domain, and
signatures that dkimpy's verifier accepts (the end-to-end tests use independent verifiers)."""

from __future__ import annotations

import email.utils
import os
import re
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy

from gateway.config import parse_config
from gateway.crypto import dkim
from gateway.delivery.signing import DkimSigner, from_domain
from gateway.errors import ConfigErrors
from gateway.keyfiles import write_secret
from tests.dkimverify import make_key

MESSAGE = (b"From: Clinic <clinic@example.com>\r\nTo: pat@example.org\r\nSubject: Hello\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nBody  text \r\n\r\n")


def test_header_list_oversigns_the_fixed_set_and_signs_others_per_occurrence() -> None:
    headers = [(b"From", b""), (b"To", b""), (b"To", b""), (b"Cc", b""), (b"Received", b""),
               (b"X-Mailer", b"")]
    names = [n.decode() for n in dkim.signed_headers(headers)[0]]
    assert names.count("from") == 2 and names.count("to") == 3 and names.count("subject") == 1
    assert names.count("cc") == 1
    assert "received" not in names and "x-mailer" not in names


def test_rsa_signature_verifies_with_dkimpy(tmp_path: Path) -> None:
    key = make_key(tmp_path, "example.com", "s1")
    signing = dkim.SigningKey("example.com", "s1", "rsa-sha256", dkim.load_key(key.key_file, "rsa-sha256"))
    signed = dkim.sign(MESSAGE, [signing]) + MESSAGE

    def verifies(content: bytes) -> bool:
        try:
            return bool(dkimpy.DKIM(content).verify(dnsfunc=lambda name, timeout=5: key.record.encode()))
        except dkimpy.ValidationError:
            return False

    assert verifies(signed)
    # Trailing blank lines do not count (relaxed body); a changed body does.
    assert verifies(signed + b"\r\n\r\n")
    assert not verifies(signed + b"P.S.\r\n")


AWKWARD_HEADERS = [
    b"From: Clinic <clinic@example.com>\r\nTo: a@example.org\r\nSubject: Hello\r\n",
    # folded, tabs, runs of spaces, WSP at the ends, odd case
    b"FROM:   Clinic\t <clinic@example.com>  \r\nto: a@example.org,\r\n\t b@example.org \r\n"
    b"SUBJECT:  Lab \t results\r\n   are ready\r\n",
    # fields listed twice (To, Cc), an empty Subject, unsigned fields in between
    b"Received: from x by y\r\nTo: a@example.org\r\nFrom: c@example.com\r\nX-Mailer: z\r\n"
    b"Cc: d@example.org\r\nTo: e@example.org\r\nCc:   f@example.org\r\nSubject:\r\n",
]


@pytest.mark.parametrize("head", AWKWARD_HEADERS)
def test_signatures_over_awkward_header_fields_verify_with_dkimpy(tmp_path: Path, head: bytes) -> None:
    key = make_key(tmp_path, "example.com", "s1")
    signing = dkim.SigningKey("example.com", "s1", "rsa-sha256", dkim.load_key(key.key_file, "rsa-sha256"))
    content = head + b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nBody\r\n"
    signed = dkim.sign(content, [signing]) + content
    assert dkimpy.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: key.record.encode())
    # Each canonical field as dkimpy's parse and relaxed canonicalisation have it.
    include, selected = dkim.signed_headers(dkim.header_fields(content[:content.index(b"\r\n\r\n") + 2]))
    ours = [(name, dkim.relaxed_header(value)) for name, value in selected]
    headers, _ = dkimpy.rfc822_parse(content)
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert ours == dkimpy.select_headers(policy.canonicalize_headers(headers), include)


@pytest.mark.parametrize("body", [b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n", b"a\r\n\r\n\r\n",
                                  b"a\r\r\n", b"a\r\n\r", b"\r\na\r\n", b"a  b \r\n\t\r\n\r\n"])
def test_relaxed_body_is_dkimpys(body: bytes) -> None:
    assert bytes(dkim.relaxed_body(body)) == CanonicalizationPolicy.from_c_value(
        b"relaxed/relaxed").canonicalize_body(body)


def test_a_header_block_that_is_not_rfc_5322_is_refused() -> None:
    for head in (b" folded first: x\r\n", b"No colon here\r\n", b"Bad Name: x\r\n"):
        with pytest.raises(dkimpy.MessageFormatError):
            dkim.header_fields(head)
    assert dkim.header_fields(b"From someone Mon Jan 1\r\nSubject: x\r\n") == [(b"Subject", b" x")]


def test_bare_line_feeds_become_crlf_before_signing() -> None:
    assert dkim.crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    already = b"a\r\nb\r\n"
    assert dkim.crlf(already) is already
    for content in (b"\n", b"\nx", b"a\r\r\n", b"a\r\n\n", b"a\rb\n", b"a\r", b"x" * 5000 + b"\n"):
        assert dkim.crlf(content) == re.sub(rb"(?<!\r)\n", b"\r\n", content), content


def test_weak_or_mismatched_or_readable_keys_are_refused(tmp_path: Path) -> None:
    weak = tmp_path / "weak.pem"
    write_secret(weak, dkim.key_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(dkim.DkimKeyError, match="1024 bits"):
        dkim.load_key(weak, "rsa-sha256")
    ed = make_key(tmp_path, "example.com", "e1", "ed25519-sha256")
    with pytest.raises(dkim.DkimKeyError, match="needs an RSA key"):
        dkim.load_key(ed.key_file, "rsa-sha256")
    os.chmod(ed.key_file, 0o644)
    with pytest.raises(dkim.DkimKeyError, match="chmod 600"):
        dkim.load_key(ed.key_file, "ed25519-sha256")
    garbage = tmp_path / "garbage.pem"
    write_secret(garbage, b"not a key")
    with pytest.raises(dkim.DkimKeyError, match="not a PEM private key"):
        dkim.load_key(garbage, "ed25519-sha256")


def test_txt_record_carries_the_public_key_for_its_algorithm(tmp_path: Path) -> None:
    assert make_key(tmp_path, "example.com", "r", "rsa-sha256").record.startswith("v=DKIM1; k=rsa; p=MII")
    ed = make_key(tmp_path, "example.com", "e", "ed25519-sha256").record
    assert ed.startswith("v=DKIM1; k=ed25519; p=") and len(ed.rpartition("p=")[2]) == 44


def test_signing_domain_is_the_from_domain_or_its_nearest_configured_parent(tmp_path: Path) -> None:
    key = make_key(tmp_path, "example.com", "s1")
    signing = dkim.SigningKey("example.com", "s1", "rsa-sha256", dkim.load_key(key.key_file, "rsa-sha256"))
    signer = DkimSigner({"example.com": [signing], "lab.example.com": [signing]})
    assert signer.signing_domain("example.com") == "example.com"
    assert signer.signing_domain("results.lab.example.com") == "lab.example.com"
    assert signer.signing_domain("mail.example.com") == "example.com"
    assert signer.signing_domain("example.org") is None
    assert signer.signing_domain("com") is None


def test_from_domain_reads_folded_and_named_addresses() -> None:
    folded = b"To: a@x.org\r\nFROM: \"Roe, Jane\"\r\n <jane@Lab.Example.com>\r\n\r\nFrom: b@c.d\r\n"
    assert from_domain(folded) == "lab.example.com"
    assert from_domain(b"To: a@x.org\r\n\r\nFrom: b@c.d\r\n") is None


@pytest.mark.parametrize("value", [
    "a@Example.com", " Clinic <a@example.com> ", "<a@example.com>", "=?utf-8?q?Cl=C3=ADnica?= <a@ex.org>",
    "Clinic Team <a.b+c@mail.example.co.uk>", '"Roe, Jane" <j@lab.example>', "a@b.org (Front desk)",
    "a@b.org, c@d.org", "Jane <a@b@c.org>", "x <a@[127.0.0.1]>", "Undisclosed:;", "no address", "a@b.org.",
])
def test_from_domain_agrees_with_the_full_address_parser(value: str) -> None:
    expected = next((address.rpartition("@")[2].strip().rstrip(">").lower() or None
                     for _, address in email.utils.getaddresses([value]) if "@" in address), None)
    assert from_domain(f"From: {value}\r\nTo: p@example.org\r\n\r\nbody\r\n".encode()) == expected


def config_with(tmp_path: Path, keys: str) -> None:
    parse_config(f"domains:\n  example.com:\n    dkim:\n{keys}", file=str(tmp_path / "c.yaml"),
                 base_dir=tmp_path)


def test_config_refuses_two_active_keys_of_one_algorithm(tmp_path: Path) -> None:
    make_key(tmp_path, "example.com", "a")
    make_key(tmp_path, "example.com", "b")
    with pytest.raises(ConfigErrors, match="2 active rsa-sha256 keys"):
        config_with(tmp_path, "      - {selector: a, key_file: example.com.a.pem}\n"
                              "      - {selector: b, key_file: example.com.b.pem}\n")
    config_with(tmp_path, "      - {selector: a, key_file: example.com.a.pem, active: false}\n"
                          "      - {selector: b, key_file: example.com.b.pem}\n")


def test_config_names_a_missing_or_wrong_key_file_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match=r"c.yaml:4: .*DKIM key file not found.*keygen dkim"):
        config_with(tmp_path, "      - {selector: s1, key_file: missing.pem}\n")
    make_key(tmp_path, "example.com", "e1", "ed25519-sha256")
    with pytest.raises(ConfigErrors, match="needs an RSA key"):
        config_with(tmp_path, "      - {selector: e1, key_file: example.com.e1.pem}\n")


@pytest.mark.parametrize("body", [b"", b"\r\n", b"\r\n\r\n", b"a\r\n", b"a", b"a \r\n\r\n", b"a  b\r\n",
                                  b"a\tb\r\n\r\n", b"a b\r\nc\r\n\r\n\r\n", b"end ", b"x\r\n \r\n"])
def test_relaxed_body_matches_dkimpy_on_every_shape(body: bytes) -> None:
    assert dkim.relaxed_body(body) == CanonicalizationPolicy.from_c_value(b"relaxed/relaxed") \
        .canonicalize_body(body)
