"""The lean parse of large messages shows the scanner exactly what `email` would, and leaves
everything irregular to `email`."""

from __future__ import annotations

import base64
import os
import re
import tracemalloc
from pathlib import Path

import pytest

from gateway.stages.dlp.extract import Extracted, extract
from gateway.stages.dlp.leanmime import parse_large

CORPUS = sorted((Path(__file__).parents[2] / "data" / "dlp" / "corpus").glob("*.eml"))


EMAIL_ONLY = 1 << 62  # `lean_from` that leaves every message to `email`


def seen(result: Extracted) -> tuple[object, ...]:
    return (result.texts, result.facts, result.limits_hit, result.attachments, result.attachment_types)


def multipart(*parts: bytes, boundary: bytes = b"b1", preamble: bytes = b"", epilogue: bytes = b"",
              close: bool = True) -> bytes:
    head = (b"From: a@example.com\r\nSubject: Referral for Pat\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n')
    body = preamble + b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return head + body + (b"--" + boundary + b"--\r\n" + epilogue if close else b"")


TEXT = b"Content-Type: text/plain\r\n\r\nPatient Pat Doe, SSN 123-45-6789.\r\n..leading dots\r\n"
PDFISH = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
          b'Content-Disposition: attachment; filename="ref.txt"\r\n\r\n'
          + base64.encodebytes(b"MRN: 00482913 DOB 06-Aug-1949\n" * 50).replace(b"\n", b"\r\n"))
REGULAR = [
    multipart(TEXT, PDFISH, preamble=b"This is MIME. SSN 078-05-1120\r\n", epilogue=b"bye 219-09-9999\r\n"),
    multipart(TEXT, multipart(TEXT, PDFISH, boundary=b"inner").split(b"\r\n", 2)[2], boundary=b"outer"),
    multipart(b"\r\nno header fields: MRN 4471120\r\n", TEXT),  # a part without header fields
    multipart(TEXT, boundary=b"b1").replace(b"--b1--\r\n", b"--b1--  \r\n"),  # transport padding
    multipart(TEXT + b"--b1x is not a delimiter\r\n", PDFISH),
    multipart(TEXT, b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
              + "<p>Pat \u00e9 DOB 01/02/1950</p>".encode()),
]
IRREGULAR = [
    multipart(TEXT, PDFISH, close=False),  # the close delimiter never comes
    multipart(TEXT, PDFISH.replace(b"TVJO", b"T*JO")),  # a stray character in base64
    multipart(TEXT, PDFISH[:-7] + b"\r\n"),  # base64 cut short: bad padding
    multipart(TEXT, b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
              b"SSN 123-=\r\n45-6789 caf=C3=A9\r\n"),
    multipart(b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nSSN 123-45-6789\r\n", TEXT),
    multipart(TEXT).replace(b"\r\n", b"\n"),  # bare line feeds
    b"Subject: no body separator\r\nSSN 123-45-6789",
]


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_the_labelled_corpus_reads_the_same(path: Path) -> None:
    raw = path.read_bytes()
    assert seen(extract(raw, lean_from=0)) == seen(extract(raw, lean_from=EMAIL_ONLY))


@pytest.mark.parametrize("raw", REGULAR + IRREGULAR)
def test_regular_and_irregular_messages_read_the_same(raw: bytes) -> None:
    assert seen(extract(raw, lean_from=0)) == seen(extract(raw, lean_from=EMAIL_ONLY))


@pytest.mark.parametrize("raw", REGULAR)
def test_regular_messages_are_parsed_lean(raw: bytes) -> None:
    assert parse_large(raw) is not None


@pytest.mark.parametrize("raw", IRREGULAR[:1] + IRREGULAR[4:])
def test_irregular_structure_is_left_to_email(raw: bytes) -> None:
    assert parse_large(raw) is None


def test_a_large_attachment_is_scanned_without_copies_of_the_message() -> None:
    attachment = base64.encodebytes(os.urandom(15 << 20)).replace(b"\n", b"\r\n")
    raw = multipart(TEXT, b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                    b'Content-Disposition: attachment; filename="scan.bin"\r\n\r\n' + attachment)
    tracemalloc.start()
    try:
        result = extract(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert any(re.search(r"123-45-6789", text.text) for text in result.texts)
    # The decoded attachment (15 MB) and little else; `email` took about eight times the message.
    assert peak < len(raw) * 1.2
