"""A message's MIME structure without copies of its bodies.

Python's `email` parser holds a message as text, as a list of its lines and as each part's
joined payload before anything is decoded: about eight times the message in memory (a 25 MB
scan of an imaging report took 260 MB), and a 5 KB note spends two thirds of its scan in the
parser's line loop. For a message whose structure is regular, this module finds the parts by
their boundaries in the bytes themselves, parses only each part's header block with `email`, and
decodes a body straight from the message's bytes when the walker asks for it (base64 with
`binascii`, in C): what is in memory is the message and the one body being read.

Whatever is not plainly regular (no CRLF line ends, a boundary that never closes, a header
defect, a nested message, quoted-printable or base64 with stray characters) is left to `email`:
`parse_large` returns None for the whole message, or a part delegates its own decoding, so the
walker sees exactly what `email` would have shown it, defects included.
"""

from __future__ import annotations

import binascii
import email
import email.parser
import email.policy
from email.message import Message
from typing import cast

MAX_NESTING = 20
MAX_PARTS = 10_000
_HEADER_END = b"\r\n\r\n"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n"


class _Irregular(Exception):
    """Something `email` should judge: parse the whole message with it instead."""


class LeanPart(Message):
    """A leaf part whose body stays in the message's bytes until it is asked for."""

    _body: memoryview
    _raw: memoryview  # the whole part, headers and body, for `email` when it must decide

    def get_payload(self, i: int | None = None, decode: bool = False) -> object:  # type: ignore[override]
        if self.is_multipart():  # its children, set by `_entity`
            return super().get_payload(i, decode)  # type: ignore[call-overload]
        if not decode:
            return bytes(self._body).decode("ascii", "surrogateescape")
        encoding = str(self.get("content-transfer-encoding", "")).strip().lower()
        if encoding == "base64":
            if _only_base64(self._body):  # nothing else in it: no defect to record
                try:
                    return binascii.a2b_base64(self._body)
                except binascii.Error:
                    pass  # bad padding: `email` decodes what it can and records the defect
        elif encoding in ("", "7bit", "8bit", "binary"):
            return bytes(self._body)
        # Quoted-printable, uuencode, base64 with anything odd: as `email` does it, defects too.
        part = email.message_from_bytes(bytes(self._raw), policy=email.policy.compat32)
        payload = part.get_payload(decode=True)
        self.defects.extend(part.defects)
        return payload


def _only_base64(body: memoryview) -> bool:
    """Whether `body` holds base64 and line breaks only; a megabyte at a time (no copy of a large
    attachment)."""
    step = 1 << 20
    return not any(bytes(body[start:start + step]).translate(None, _BASE64_ALPHABET)
                   for start in range(0, len(body), step))


_HEADERS = email.parser.BytesParser(LeanPart, policy=email.policy.compat32)


def parse_large(raw: bytes) -> Message | None:
    """The message, or None when its structure is not plainly regular (use `email`)."""
    if b"\r\n" not in raw[:1000] or b"\n" in raw[:raw.find(_HEADER_END)].replace(b"\r\n", b""):
        return None  # bare line feeds: `email` knows how lenient to be
    try:
        return _entity(memoryview(raw), raw, 0, len(raw), 0, [0])
    except (_Irregular, RecursionError, ValueError, LookupError):
        return None


def _entity(view: memoryview, raw: bytes, start: int, end: int, depth: int, parts: list[int]) -> LeanPart:
    parts[0] += 1
    if depth > MAX_NESTING or parts[0] > MAX_PARTS:
        raise _Irregular
    if raw.startswith(b"\r\n", start):
        header_end, body_start = start, start + 2  # a part with no header fields
    else:
        found = raw.find(_HEADER_END, start, end)
        if found < 0:
            raise _Irregular
        header_end, body_start = found + 2, found + 4
    part = cast(LeanPart, _HEADERS.parsebytes(raw[start:header_end] + b"\r\n", headersonly=True))
    if part.defects:
        raise _Irregular
    maintype = part.get_content_maintype()
    if maintype == "message":
        raise _Irregular  # nested messages: `email` parses them into their own tree
    if maintype != "multipart":
        part._body = view[body_start:end]
        part._raw = view[start:end]
        return part
    boundary = part.get_boundary()
    if not boundary:
        raise _Irregular
    delimiter = b"--" + boundary.encode("ascii", "surrogateescape")
    children: list[Message | str] = []
    preamble_end = None
    part_start = None
    position = body_start
    while True:
        at = _next_delimiter(raw, delimiter, position, end, first=position == body_start)
        if at is None:
            raise _Irregular  # no closing delimiter: a broken structure
        line_start, line_end, closing = at
        if part_start is None:
            preamble_end = line_start
        else:
            children.append(_entity(view, raw, part_start, line_start, depth + 1, parts))
        if closing:
            break
        part_start = position = line_end
    if not children:
        raise _Irregular
    part.set_payload(children)
    part.preamble = raw[body_start:preamble_end].decode("ascii", "surrogateescape") or None
    epilogue = raw[line_end:end].decode("ascii", "surrogateescape")
    part.epilogue = epilogue or None
    return part


def _next_delimiter(raw: bytes, delimiter: bytes, position: int, end: int, *,
                    first: bool) -> tuple[int, int, bool] | None:
    """(where the delimiter's line starts, with its CRLF before; where the next part starts;
    whether it closes) for the next delimiter line at or after `position`."""
    while True:
        if first and raw.startswith(delimiter, position):
            line_start, at = position, position
        else:
            found = raw.find(b"\r\n" + delimiter, position, end)
            if found < 0:
                return None
            line_start, at = found, found + 2
        first = False
        after = at + len(delimiter)
        closing = raw.startswith(b"--", after)
        if closing:
            after += 2
        while after < end and raw[after] in b" \t":
            after += 1  # transport padding
        if raw.startswith(b"\r\n", after):
            return line_start, after + 2, closing
        if after >= end and closing:
            return line_start, end, True
        position = after  # "--boundary" followed by more text: not a delimiter
