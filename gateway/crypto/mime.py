"""Splitting a message into what is encrypted and what stays outside, and putting it together.

The inner entity is the message's content (its Content-* header fields and body) plus copies of
the header fields a reader wants to see (Subject, From, To, Cc, Date, Message-ID, Reply-To),
marked ``protected-headers="v1"`` as in the LAMPS header-protection draft, so that clients that
know it show the real subject. The outer message keeps the routing and trace header fields, and
its Subject is replaced by a neutral one: PHI in a subject does not travel in clear.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

_PROTECTED = ("subject", "from", "to", "cc", "date", "message-id", "reply-to")
_FIELD_NAME = re.compile(rb"^([!-9;-~]+):")


@dataclass(frozen=True)
class Split:
    outer: list[bytes]  # header fields that stay outside (each with its folded lines and CRLF)
    inner: bytes  # the MIME entity to encrypt: content header fields, protected copies, body


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, raw field with continuation lines and CRLF) for each header field."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
            continue
        match = _FIELD_NAME.match(line)
        fields.append((match.group(1).lower() if match else b"", line + b"\r\n"))
    return fields


def split(message: bytes) -> Split:
    head, _, body = message.partition(b"\r\n\r\n")
    fields = _fields(head)
    content = [raw for name, raw in fields if name.startswith(b"content-")]
    if not any(name == b"content-type" for name, _ in fields):
        content.insert(0, b"Content-Type: text/plain; charset=us-ascii\r\n")
    content = [_mark_protected(raw) if raw.lower().startswith(b"content-type:") else raw for raw in content]
    copies = [raw for name, raw in fields if name.decode("ascii", "replace") in _PROTECTED]
    outer = [raw for name, raw in fields if not name.startswith(b"content-") and name != b"mime-version"]
    return Split(outer, b"".join(content) + b"".join(copies) + b"\r\n" + body)


def _mark_protected(field: bytes) -> bytes:
    return field.rstrip(b"\r\n") + b';\r\n protected-headers="v1"\r\n'


def assemble(parts: Split, content_headers: list[str], body: bytes, neutral_subject: str) -> bytes:
    """The outer message: routing fields, the neutral Subject, the encryption's content fields."""
    outer = [raw for raw in parts.outer if not raw.lower().startswith(b"subject:")]
    outer.append(f"Subject: {neutral_subject}\r\n".encode())
    outer.append(b"MIME-Version: 1.0\r\n")
    outer += [f"{field}\r\n".encode() for field in content_headers]
    return b"".join(outer) + b"\r\n" + body


def base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76))
