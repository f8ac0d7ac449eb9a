"""Large messages end to end: spilled to disk while they arrive, worked on a few at a time, and
delivered byte for byte."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess

import aiosmtplib
import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from gateway.delivery.client import DATA_PIECE, data_pieces
from tests.conftest import send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually, port_open

MX = {("clinic.test", "MX"): ["10 mx1.clinic.test."], ("mx1.clinic.test", "A"): ["127.0.0.11"]}


def large_message(number: int, size: int) -> bytes:
    """A referral with a base64 attachment; lines that start or end with a dot on the way."""
    attachment = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return (f"From: <{SENDER}>\r\nTo: <pat@clinic.test>\r\nSubject: imaging {number}\r\n"
            f"Message-ID: <large-{number}@example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\n.a line that starts with a dot\r\n.\r\n..\r\n"
            "and one that ends with one.\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            ).encode() + attachment + b"--b--\r\n"


async def test_concurrent_large_messages_are_delivered_intact_and_leave_no_scratch(
        world: MailWorld) -> None:
    await world.start_dns(MX)
    sink = await world.sink("127.0.0.11")
    # A budget of 4 MB: three 3 MB messages are worked on one after another, and all go.
    gateway = await world.gateway({"limits": {"message_memory": "4MB"}})
    messages = [large_message(n, 3 << 20) for n in range(3)]

    async def submit(content: bytes) -> None:
        client = gateway.client()
        code, text = await send(client, SENDER, ["pat@clinic.test"], content)
        assert code == 250, text
        await client.quit()

    await asyncio.gather(*(submit(m) for m in messages))
    await eventually(lambda: len(sink.messages) == 3, timeout=60)
    delivered = sorted(sink.messages, key=lambda m: m.content[-200:])
    for original in messages:
        # The delivered copy is the original after our Received header (and any signature).
        assert sum(m.content.endswith(original) for m in delivered) == 1
    assert list((gateway.spool.directory / "tmp").iterdir()) == []
    assert gateway.gateway.handler.memory.used == 0


async def test_a_large_message_over_the_size_limit_is_refused_and_leaves_nothing(world: MailWorld) -> None:
    await world.start_dns(MX)
    await world.sink("127.0.0.11")
    gateway = await world.gateway({"limits": {"max_message_size": "2MB"}})
    code, text = await send(gateway.client(), SENDER, ["pat@clinic.test"], large_message(0, 3 << 20))
    assert code == 552 and text.startswith("5.3.4")
    assert gateway.queued() == []
    assert list((gateway.spool.directory / "tmp").iterdir()) == []


def test_data_pieces_are_what_aiosmtplib_would_send_in_one() -> None:
    rng = random.Random(7)
    alphabet = [b"a", b".", b"\r", b"\n", b"\r\n", b" ", b"x" * 50]
    plain = [b"Subject: x\r\n\r\n" + b"line\r\n" * 100, b".lead\r\nx\r\n", b"a\r\n.b\r\n..c", b"a\rb",
             b"a\nb", b"no end", b"", b"\r\n", b"."]
    for content in plain + [b"".join(rng.choice(alphabet) for _ in range(size // 5))
                            for size in (0, 10, 5000, DATA_PIECE - 1, DATA_PIECE * 3 + 17)]:
        pieces = list(data_pieces(content))
        whole = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content)) + b".\r\n"
        assert b"".join(pieces) == whole, content[:40]
        # bounded: a piece is DATA_PIECE and its last line, at most doubled by CRs and dots
        assert all(len(piece) <= 2 * (DATA_PIECE + 1024) for piece in pieces)


async def test_a_large_message_to_postfix_smtp_sink_is_taken_once(world: MailWorld) -> None:
    """A real peer in its own process (Postfix's smtp-sink) that answers the moment the final dot
    arrives: the message sent in pieces is taken once, and nothing is left to retry."""
    await world.start_dns(MX)
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-c", "-u", "nobody", f"127.0.0.11:{world.port}", "16"],
                            stdout=subprocess.PIPE)
    try:
        gateway = await world.gateway()
        await eventually(lambda: port_open(world.port, "127.0.0.11"))
        client = gateway.client()
        code, text = await send(client, SENDER, ["pat@clinic.test"], large_message(0, 3 << 20))
        assert code == 250, text
        await eventually(lambda: not any(gateway.spool.counts().values()), timeout=30)
    finally:
        sink.kill()
        output, _ = sink.communicate(timeout=10)
    counts = [line.rpartition(b"mesg=")[2].strip() for line in output.split(b"\r") if b"mesg=" in line]
    assert counts[-1] == b"1"  # taken once


async def test_a_large_message_that_cannot_be_spilled_is_451_and_the_session_goes_on(
        world: MailWorld) -> None:
    await world.start_dns(MX)
    sink = await world.sink("127.0.0.11")
    gateway = await world.gateway()
    scratch = gateway.spool.directory / "tmp"
    scratch.rmdir()
    scratch.write_text("not a directory")  # every spill file fails to open, as on a broken disk
    try:
        client = gateway.client()
        await client.connect()
        await client.mail(SENDER)
        await client.rcpt("pat@clinic.test")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(large_message(0, 2 << 20))
        assert (refused.value.code, refused.value.message[:5]) == (451, "4.3.0")
        assert gateway.queued() == []
        # The same session carries on: the message's lines were read, not taken as commands.
        assert (await client.noop()).code == 250
        code, text = await send(client, SENDER, ["pat@clinic.test"], b"Subject: small\r\n\r\nhello\r\n")
        assert code == 250, text
    finally:
        scratch.unlink()
        scratch.mkdir()
    await eventually(lambda: len(sink.messages) == 1)


async def test_a_refusal_sent_while_a_large_message_is_still_going_out_is_taken(
        world: MailWorld) -> None:
    """Some servers refuse a message as soon as they see it is too big, before the final dot.
    That reply arrives while the pieces are still being written; it must be the answer (a 552
    and a bounce at once), not be dropped as unsolicited, leaving the delivery to time out and
    be retried for days."""
    await world.start_dns(MX)
    seen_data = asyncio.Event()

    async def refusing_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx1.clinic.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 mx1.clinic.test\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await reader.readexactly(64 * 1024)  # the first of the message, then refuse
                writer.write(b"552 5.3.4 Message size exceeds fixed limit\r\n")
                seen_data.set()
                await reader.readuntil(b"\r\n.\r\n")  # the rest, as a server must
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    world.servers.append(await asyncio.start_server(refusing_peer, "127.0.0.11", world.port, limit=8 << 20))
    gateway = await world.gateway()
    client = gateway.client()
    code, text = await send(client, SENDER, ["pat@clinic.test"], large_message(0, 3 << 20))
    assert code == 250, text
    await seen_data.wait()
    # Bounced at once with the peer's own words (the world's command timeout is 3 s and its
    # retries 1 s apart: a dropped reply would show as a deferral, not a bounce).
    dsn = await eventually(lambda: world.dsns(), timeout=20)
    assert "552" in dsn[0].as_string() and "5.3.4" in dsn[0].as_string()
    await eventually(lambda: not any(gateway.spool.counts().values()))
