"""Reading DATA in pieces: the message as the client meant it, whatever the pieces and wherever
it spills to disk; limits answered after the end; nothing left on disk."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from gateway.errors import SpoolError
from gateway.ingress.dataread import DataState, Received, read_data
from gateway.spool.cipher import SpoolKeyring
from gateway.spool.spill import RECORD_SIZE, Spill
from tests.polling import eventually


def stuffed(message: bytes) -> bytes:
    """What a client sends for `message` (RFC 5321 4.5.2): dots doubled at line starts, the end."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def random_message(rng: random.Random, size: int) -> bytes:
    """Lines made to find the edges: leading and trailing dots, lone dots, empty lines."""
    choices = [b".", b"..", b"...", b".x", b"x.", b"", b"a.b", b"\r", b"end.", b"=2E"]
    lines = []
    while sum(len(line) + 2 for line in lines) < size:
        lines.append(rng.choice(choices) + bytes(rng.choice(b"abc. ") for _ in range(rng.randrange(0, 70))))
    return b"\r\n".join(lines) + b"\r\n"


async def feed_and_read(wire: bytes, tmp_path: Path, *, pieces: list[int], limit: int = 64,
                        memory_limit: int = 100, size_limit: int | None = None,
                        line_limit: int = 1001) -> tuple[Received, asyncio.StreamReader, list[Spill]]:
    reader = asyncio.StreamReader(limit=limit)
    keyring = SpoolKeyring((bytes(32),))
    spills: list[Spill] = []

    def new_spill() -> Spill:
        spills.append(Spill(tmp_path, keyring))
        return spills[-1]

    task = asyncio.ensure_future(read_data(reader, size_limit=size_limit, line_limit=line_limit,
                                           new_spill=new_spill, memory_limit=memory_limit))
    offset = 0
    for length in pieces:  # the bytes arrive cut where the test says
        reader.feed_data(wire[offset:offset + length])
        offset += length
        # The reader takes what has arrived and waits for more (or is done) before the next
        # bytes come: each cut is one the reader really sees.
        await eventually(lambda: task.done() or reader._waiter is not None, timeout=5, interval=0)
    reader.feed_data(wire[offset:])
    return await asyncio.wait_for(task, 10), reader, spills


def content_of(received: Received) -> bytes:
    assert received.state is DataState.NOMINAL
    if received.spill is not None:
        return received.spill.getvalue()
    assert received.content is not None
    return received.content


@pytest.mark.parametrize("seed", range(80))
async def test_random_messages_in_random_pieces_come_out_as_sent(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    message = random_message(rng, rng.choice([0, 10, 300, 5000]))
    wire = stuffed(message)
    cuts = [rng.randrange(1, 9) for _ in range(rng.randrange(0, 200))]
    received, _, _ = await feed_and_read(wire, tmp_path, pieces=cuts,
                                              memory_limit=rng.choice([50, 1000, 1 << 20]))
    assert content_of(received) == message
    if received.spill is not None:
        received.spill.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("message", [b"", b"\r\n", b".\r\n", b"..\r\n", b"x.\r\n", b"a\r\n.\r\n.b\r\n"])
async def test_edge_messages(message: bytes, tmp_path: Path) -> None:
    received, _, _ = await feed_and_read(stuffed(message), tmp_path, pieces=[1] * 12)
    assert content_of(received) == message


async def test_commands_pipelined_after_the_end_stay_for_the_session(tmp_path: Path) -> None:
    received, reader, _ = await feed_and_read(stuffed(b"hello.\r\n") + b"QUIT\r\n", tmp_path, pieces=[])
    assert content_of(received) == b"hello.\r\n"
    assert await reader.readuntil(b"\r\n") == b"QUIT\r\n"


async def test_a_large_message_goes_to_an_encrypted_spill_and_leaves_no_file(tmp_path: Path) -> None:
    marker = b"PATIENT-DOB-1949-08-06 "
    message = (marker * 40 + b"\r\n") * 3000  # 2.8 MB: several sealed records
    received, _, _ = await feed_and_read(stuffed(message), tmp_path, pieces=[], limit=65536,
                                         memory_limit=1 << 20)
    assert received.spill is not None and received.content is None
    assert received.spill.size > 2 * RECORD_SIZE
    (on_disk,) = tmp_path.iterdir()
    assert marker not in on_disk.read_bytes()  # at rest encrypted, like the spool
    assert received.spill.getvalue() == message
    received.spill.close()
    assert list(tmp_path.iterdir()) == []


async def test_over_the_size_limit_is_too_much_and_the_spill_is_gone(tmp_path: Path) -> None:
    message = b"x" * 70 + b"\r\n"
    received, reader, spills = await feed_and_read(stuffed(message * 100) + b"NOOP\r\n", tmp_path,
                                                   pieces=[50] * 140, size_limit=5000)
    assert received.state is DataState.TOO_MUCH
    assert spills and list(tmp_path.iterdir()) == []  # it had spilled, and was removed
    assert await reader.readuntil(b"\r\n") == b"NOOP\r\n"  # read to the end all the same


@pytest.mark.parametrize("memory_limit", [100, 1 << 20])
@pytest.mark.parametrize("where", ["start", "middle", "last"])
async def test_a_line_over_the_limit_is_too_long(memory_limit: int, where: str, tmp_path: Path) -> None:
    long_line = b"y" * 1000 + b"\r\n"  # 1002 octets with its CRLF: one over
    lines = [b"short\r\n"] * 50
    lines.insert({"start": 0, "middle": 25, "last": 50}[where], long_line)
    received, _, _ = await feed_and_read(stuffed(b"".join(lines)), tmp_path, pieces=[3] * 100,
                                         memory_limit=memory_limit)
    assert received.state is DataState.TOO_LONG
    assert list(tmp_path.iterdir()) == []


async def test_a_line_of_exactly_the_limit_is_fine(tmp_path: Path) -> None:
    message = b"z" * 999 + b"\r\n"
    received, _, _ = await feed_and_read(stuffed(message), tmp_path, pieces=[7] * 200, memory_limit=100)
    assert content_of(received) == message


async def test_a_spill_record_moved_or_altered_is_refused(tmp_path: Path) -> None:
    spill = Spill(tmp_path, SpoolKeyring((bytes(32),)))
    spill.write(b"a" * (RECORD_SIZE * 2))
    (path,) = tmp_path.iterdir()
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(Exception, match="authentication"):
        spill.getvalue()
    spill.close()


async def test_a_spill_that_cannot_be_written_is_451_and_the_rest_is_not_taken_for_commands(
        tmp_path: Path) -> None:
    reader = asyncio.StreamReader(limit=64)

    def no_spill() -> Spill:
        raise SpoolError("cannot write a spill file: No space left on device")

    body = b"".join(b"RCPT TO:<line%d@example.org>\r\n" % i for i in range(200))
    reader.feed_data(stuffed(body) + b"QUIT\r\n")
    received = await read_data(reader, size_limit=None, line_limit=1001, new_spill=no_spill,
                               memory_limit=100)
    assert received.state is DataState.WRITE_FAILED
    assert await reader.readuntil(b"\r\n") == b"QUIT\r\n"  # the message's lines were all read
