"""A record sealed a piece at a time is the record `seal` makes of the parts joined."""

from __future__ import annotations

import os

import pytest

from gateway.spool.cipher import STREAM_PIECE, FileCipher, SpoolKeyring


@pytest.mark.parametrize("sizes", [(0,), (10, 0, 5), (STREAM_PIECE - 1, 2, STREAM_PIECE * 2 + 7)])
def test_a_streamed_record_opens_as_the_parts_joined(sizes: tuple[int, ...]) -> None:
    keyring = SpoolKeyring((os.urandom(32),))
    cipher = FileCipher.create(keyring, "0123456789ABCDEF012345")
    parts = [os.urandom(size) for size in sizes]
    blob = cipher.header + b"".join(cipher.seal_stream(b"content", parts))
    opened, offset = FileCipher.from_header(keyring, "0123456789ABCDEF012345", blob)
    assert opened.records(blob, offset, tolerate_torn_tail=False) == [(b"content", b"".join(parts))]
    # Bound to its file and its kind, as every record is.
    other, _ = FileCipher.from_header(keyring, "0123456789ABCDEF0123XX", blob)
    with pytest.raises(Exception, match="authentication"):
        other.records(blob, offset, tolerate_torn_tail=False)
