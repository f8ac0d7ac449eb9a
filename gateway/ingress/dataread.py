"""Reading the message of one SMTP DATA command (RFC 5321 4.5.2), in bounded memory.

The bytes come in pieces, each up to the next CRLF "." CRLF (or the reader's limit, 64 KB): a
5 KB message is one search in C, not a call per line. Pieces are kept as they came and undone in
one pass when there are enough of them: the dot a client doubled at the start of a line is
removed, lines longer than the limit are noticed (500 after the end, as aiosmtpd does), and past
the size limit nothing more is kept (552 after the end). If the spill file cannot be written (a
full disk), the rest is read and dropped and the answer is 451: the client keeps the message,
and none of its lines is ever taken for a command.

A message up to `memory.LARGE` is returned as bytes; beyond that everything goes to a `Spill`
(an encrypted file in the spool's tmp/) as it arrives, so what a slow client sends costs disk,
not memory. Each piece is a copy of at most the reader's limit, so a 150 MB message passes
through a few hundred kilobytes of memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum

from gateway.errors import SpoolError
from gateway.memory import LARGE
from gateway.spool.spill import Spill

_END_LINE = b"\r\n.\r\n"


class DataState(Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the line length limit: 500
    TOO_MUCH = "too_much"  # over the size limit: 552
    WRITE_FAILED = "write_failed"  # the spill file could not be written (a full disk): 451


@dataclass
class Received:
    state: DataState
    content: bytes | None = None  # the message, when it stayed in memory
    spill: Spill | None = None  # the message, when it was larger (the caller closes it)


class _Lines:
    """The line length check across pieces: the bytes since the last line feed carry over."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.run = 0

    def ok(self, raw: bytes) -> bool:
        first = raw.find(b"\n")
        if first < 0:
            self.run += len(raw)
            return self.run <= self.limit
        longest = max(map(len, raw.split(b"\n")[1:-1]), default=0) + 1  # with their line feed
        longest = max(longest, self.run + first + 1)
        self.run = len(raw) - raw.rfind(b"\n") - 1
        return longest <= self.limit and self.run <= self.limit


def unstuff(raw: bytes, tail: bytes) -> bytes:
    """`raw` with the leading dot of each line removed; `tail` is the raw bytes just before it
    (at least the last two), so a line that began in the previous piece is handled too."""
    if b"." not in raw:
        return raw
    joined = tail[-2:] + raw
    return joined.replace(b"\r\n.", b"\r\n")[len(tail[-2:]):]


async def read_data(reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int,
                    new_spill: Callable[[], Spill], memory_limit: int = LARGE) -> Received:
    """Read up to and including the line with the lone dot. Raises what the reader raises when
    the connection goes (the caller closes the spill it may have got by then: none is
    returned on an exception, it is closed here)."""
    state = DataState.NOMINAL
    lines = _Lines(line_limit)
    pieces: list[bytes] = []
    pending = 0  # bytes in `pieces`
    received = 0  # raw bytes, dots and all, as aiosmtpd counts them
    tail = b"\r\n"  # the raw bytes just before the pieces not yet undone (at first, DATA's own)
    spill: Spill | None = None
    try:
        async for piece in _raw_pieces(reader):
            received += len(piece)
            if state is DataState.NOMINAL and size_limit and received > size_limit:
                state = DataState.TOO_MUCH
            if state is DataState.NOMINAL:
                pieces.append(piece)
                pending += len(piece)
                if spill is not None or pending > memory_limit:
                    try:
                        if spill is None:
                            spill = new_spill()
                        tail, pending = _flush(pieces, tail, lines, spill), 0
                    except SpoolError:  # the rest is read and dropped: never taken as commands
                        state = DataState.WRITE_FAILED
                    if lines.run > line_limit:
                        state = DataState.TOO_LONG
            elif pieces or spill is not None:  # nothing more is kept: the answer is an error
                pieces, pending = [], 0
                if spill is not None:
                    spill.close()
                    spill = None
        if state is not DataState.NOMINAL:
            return Received(state)
        if spill is not None:
            received_spill, spill = spill, None
            if pieces:
                try:
                    _flush(pieces, tail, lines, received_spill)
                except SpoolError:
                    received_spill.close()
                    return Received(DataState.WRITE_FAILED)
            if lines.run > line_limit:
                received_spill.close()
                return Received(DataState.TOO_LONG)
            return Received(state, spill=received_spill)
        raw = b"".join(pieces)
        if not lines.ok(raw):
            return Received(DataState.TOO_LONG)
        return Received(state, content=unstuff(raw, tail))
    finally:
        if spill is not None:
            spill.close()


async def _raw_pieces(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The raw bytes of the message, in order, up to (not including) the "." CRLF that ends it.

    The end is CRLF "." CRLF, whose first CRLF also ends the last line (or the DATA command
    itself, for an empty message). One search for the whole sequence takes everything up to it,
    or a reader's limit of it. Bytes that may be the start of the end (a CRLF, a CRLF and a dot,
    ...) are held back, and the rest of the sequence is read exactly: the stream always has that
    many bytes left (at the least, the end itself), so this never waits for bytes not sent."""
    held = _END_LINE[:2]  # the DATA command's own line end: the start of an end, not content
    virtual = 2  # bytes at the front of `held` that are not content
    while True:
        if held:
            window = held + await reader.readexactly(len(_END_LINE) - len(held))
            if window == _END_LINE:
                if window[virtual:2]:
                    yield window[virtual:2]  # the line end before the dot is the message's
                return
        else:
            try:
                piece = await reader.readuntil(_END_LINE)
            except asyncio.LimitOverrunError as overrun:
                window = await reader.read(overrun.consumed)
            else:
                yield piece[:-3]
                return
        keep = next((k for k in (4, 3, 2, 1) if window.endswith(_END_LINE[:k])), 0)
        content = window[virtual:len(window) - keep]
        held, virtual = window[len(window) - keep:], max(0, virtual - (len(window) - keep))
        if content:
            yield content


def _flush(pieces: list[bytes], tail: bytes, lines: _Lines, spill: Spill) -> bytes:
    """Write the pieces to the spill, undone; returns the new tail. A line too long leaves
    `lines.run` over the limit (checked by the caller)."""
    raw = b"".join(pieces)
    pieces.clear()
    if not lines.ok(raw):
        lines.run = lines.limit + 1
    spill.write(unstuff(raw, tail))
    return (tail + raw)[-2:]
