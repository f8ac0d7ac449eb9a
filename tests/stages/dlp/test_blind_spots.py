"""Every byte a recipient's client could show is scanned: the placements an outside attack run
used to slip an SSN past DLP, each as a whole message (and one over real SMTP)."""

from __future__ import annotations

import binascii

import pytest

from gateway.stages.dlp.extract import SCAN_INCOMPLETE, extract
from tests.stages.dlp.test_extract import SSN, found

CLEAN_TEXT = b"Content-Type: text/plain\r\n\r\nNothing to see here.\r\n"


def multipart(preamble: bytes = b"", epilogue: bytes = b"", boundary: bytes = b"BOUNDARY") -> bytes:
    return (b"From: dr@clinic.example\r\nTo: pat@example.org\r\nSubject: notes\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n" + preamble +
            b"\r\n--BOUNDARY\r\n" + CLEAN_TEXT + b"--BOUNDARY--\r\n" + epilogue)


def uuencode(data: bytes) -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45))
    return b"begin 644 results.txt\n" + lines + b"`\nend\n"


PLACEMENTS = {
    "preamble": multipart(preamble=f"Patient SSN {SSN}".encode()),
    "epilogue": multipart(epilogue=f"Patient SSN {SSN}\r\n".encode()),
    "x-header": b"X-Patient-Ref: SSN " + SSN.encode() + b"\r\nSubject: hi\r\n\r\nhello\r\n",
    "display name": b"To: \"SSN " + SSN.encode() + b"\" <pat@example.org>\r\nSubject: hi\r\n\r\nhello\r\n",
    "content-description": (b"Subject: hi\r\nMIME-Version: 1.0\r\n"
                            b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                            b"Content-Type: text/plain\r\nContent-Description: SSN " + SSN.encode() +
                            b"\r\n\r\nhello\r\n--B--\r\n"),
    "html comment": (b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<p>Hello</p><!-- SSN " + SSN.encode() +
                     b" -->\r\n"),
    "hidden element": (b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<p>Hello<span style=\"display:none\">"
                       b"SSN " + SSN.encode() + b"</span></p>\r\n"),
    "uuencoded": b"Subject: hi\r\n\r\nSee attached.\r\n\r\n" + uuencode(f"Patient SSN {SSN}\n".encode()),
    "after a corrupted boundary": (  # the clear text lands inside the base64 part before it
        b"Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"GOOD\"\r\n\r\n"
        b"--GOOD\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"
        b"--G0OD\r\nContent-Type: text/plain\r\n\r\nPatient SSN " + SSN.encode() + b"\r\n--GOOD--\r\n"),
}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_an_ssn_is_found_wherever_a_client_could_show_it(placement: str) -> None:
    assert found(PLACEMENTS[placement]).get("ssn", 0) >= 1


def test_a_broken_structure_read_as_raw_text_is_not_an_incomplete_scan() -> None:
    assert SCAN_INCOMPLETE not in extract(PLACEMENTS["after a corrupted boundary"]).facts


def test_trace_headers_are_not_scanned() -> None:
    raw = b"Received: from x (id 219-45-6789)\r\nMessage-ID: <219-45-6789@x>\r\nSubject: hi\r\n\r\nhello\r\n"
    assert found(raw) == {}
