"""ESMTP behaviour on the wire: pipelining, 8-bit and SMTPUTF8, DSN parameters, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import Config
from gateway.message import Recipient
from tests.conftest import message, send
from tests.ingress.test_limits import read_reply


async def session(gw: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*gw.address())
    assert (await read_reply(reader)).startswith(b"220 mailward.test")
    writer.write(b"EHLO client.test\r\n")
    ehlo = await read_reply(reader)
    assert b"250-PIPELINING" in ehlo and b"250-ENHANCEDSTATUSCODES" in ehlo
    return reader, writer


async def queue_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, marker: str) -> None:
    """One complete transaction on an open session; asserts it was queued."""
    writer.write(b"MAIL FROM:<dr@example.com>\r\nRCPT TO:<p@example.org>\r\nDATA\r\n")
    for _ in range(3):
        await read_reply(reader)
    writer.write(message(marker) + b".\r\n")
    assert (await read_reply(reader)).startswith(b"250 2.0.0")


async def test_pipelined_transactions_are_all_answered_in_order(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    batch = b""
    for i in range(3):
        batch += (b"MAIL FROM:<dr@example.com>\r\nRCPT TO:<a@example.org>\r\n"
                  b"RCPT TO:<b@example.org>\r\nDATA\r\n")
        batch += message(f"PIPE{i}") + b".\r\n"
    batch += b"QUIT\r\n"
    writer.write(batch)  # everything in one write, as a pipelining client does
    replies = [await read_reply(reader) for _ in range(3 * 5 + 1)]
    codes = [r[:3] for r in replies]
    assert codes == [b"250", b"250", b"250", b"354", b"250"] * 3 + [b"221"]
    assert len(gw.queued()) == 3
    writer.close()


async def test_eight_bit_utf8_message_and_smtputf8_address_are_kept_byte_for_byte(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    body = ("From: Dr. Müller <müller@example.com>\r\nTo: Zoë <zoë@exämple.org>\r\n"
            "Subject: Befund für Zoë\r\n\r\nGrüße, 患者 ✓\r\n").encode()
    reader, writer = await session(gw)
    writer.write(b"MAIL FROM:<m\xc3\xbcller@example.com> SMTPUTF8 BODY=8BITMIME\r\n")
    assert (await read_reply(reader)).startswith(b"250 2.1.0")
    writer.write("RCPT TO:<zoë@exämple.org>\r\n".encode())
    assert (await read_reply(reader)).startswith(b"250 2.1.5")
    writer.write(b"DATA\r\n")
    assert (await read_reply(reader)).startswith(b"354")
    writer.write(body + b".\r\n")
    reply = await read_reply(reader)
    assert reply.startswith(b"250 2.0.0 Ok: queued as")
    queue_id = reply.split()[-1].decode()
    stored = gw.spool.load(queue_id)
    assert stored.envelope.smtputf8 and stored.envelope.body == "8BITMIME"
    assert stored.envelope.recipients[0].address == "zoë@exämple.org"
    content = gw.spool.content(queue_id)
    assert content.endswith(body)
    assert b"with UTF8SMTP id" in content
    writer.close()


async def test_dsn_parameters_are_kept_with_the_envelope(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    client = gw.client()
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("dsn")
    await client.mail("dr@example.com", options=["RET=HDRS", "ENVID=QQ+2B123"])
    await client.rcpt("p@example.org", options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;p+2Bx@example.org"])
    await client.rcpt("q@example.org", options=["NOTIFY=NEVER"])
    reply = await client.data(message())
    stored = gw.spool.load(reply.message.split()[-1])
    assert (stored.envelope.ret, stored.envelope.envid) == ("HDRS", "QQ+123")
    assert stored.envelope.recipients == (
        Recipient("p@example.org", orcpt="rfc822;p+x@example.org", notify=("FAILURE", "DELAY")),
        Recipient("q@example.org", notify=("NEVER",)))
    await client.quit()


async def test_bad_dsn_parameter_is_refused(make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    writer.write(b"MAIL FROM:<dr@example.com> RET=EVERYTHING\r\n")
    assert (await read_reply(reader)).startswith(b"501 5.5.4 Error: bad RET parameter")
    writer.write(b"MAIL FROM:<dr@example.com> FOO=BAR\r\n")
    assert (await read_reply(reader)).startswith(b"555 5.5.4")
    writer.close()


async def test_null_sender_is_accepted_for_bounces(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    code, text = await send(gw.client(), "", ["p@example.org"], message("NDR"))
    assert code == 250
    assert gw.spool.load(text.split()[-1]).envelope.sender == ""


async def test_replies_carry_enhanced_status_codes(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    for command, expected in ((b"NOOP", b"250 2.0.0"), (b"RCPT TO:<a@example.org>", b"503 5.5.1"),
                              (b"BOGUS", b"500 5.5.2"), (b"RSET", b"250 2.0.0"),
                              (b"QUIT", b"221 2.0.0")):
        writer.write(command + b"\r\n")
        assert (await read_reply(reader)).startswith(expected), command
    writer.close()


async def test_malformed_commands_do_not_lose_an_acknowledged_message(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    await queue_one(reader, writer, "KEEP")
    garbage = [b"\x00\xff\xfe binary", b"MAIL FROM:", b"RCPT TO:<x@example.org>", b"DATA",
               b"A" * 2000, b"MAIL FROM:<a@example.com> SIZE=abc", b"AUTH"]
    for line in garbage:
        writer.write(line + b"\r\n")
        assert (await read_reply(reader))[:1] in (b"5", b"4")
    writer.close()
    assert len(gw.queued()) == 1
    assert b"KEEP" in gw.spool.content(gw.queued()[0])


async def test_connection_dropped_mid_data_queues_nothing_for_that_transaction(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    await queue_one(reader, writer, "FIRST")
    writer.write(b"MAIL FROM:<dr@example.com>\r\nRCPT TO:<p@example.org>\r\nDATA\r\n")
    for _ in range(3):
        await read_reply(reader)
    writer.write(b"Subject: half\r\n\r\nonly half of the mess")
    await writer.drain()
    writer.transport.abort()  # the client vanishes mid-DATA
    await asyncio.wait_for(gw.gateway.tracker.wait_empty(), 10)
    assert len(gw.queued()) == 1
    assert b"FIRST" in gw.spool.content(gw.queued()[0])


@pytest.mark.parametrize("arg", ["<a@b.example>", "<a.b+tag@b.example> SIZE=100 BODY=8BITMIME",
                                 " <x_y@sub.b.example>", '<"x y"@b.example>', "<a@[127.0.0.1]>",
                                 "<bad address@b.example>", "<a@b.example", "a@b.example"])
def test_fast_address_parsing_agrees_with_aiosmtpd(arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    from gateway.ingress.protocol import GatewaySMTP

    ours = GatewaySMTP.__new__(GatewaySMTP)
    general = SMTP.__new__(SMTP)
    ours.local_part_limit = general.local_part_limit = 0
    assert ours._getaddr(arg) == general._getaddr(arg)


async def test_message_with_a_line_over_1000_octets_is_refused_and_the_session_goes_on(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    for line_length in (998, 5000, 100_000):  # within RFC 5321, over it, over the read buffer
        writer.write(b"MAIL FROM:<dr@example.com>\r\nRCPT TO:<p@example.org>\r\nDATA\r\n")
        for _ in range(3):
            await read_reply(reader)
        writer.write(b"Subject: long\r\n\r\n" + b"y" * line_length + b"\r\n.\r\n")
        reply = await read_reply(reader)
        assert reply.startswith(b"250" if line_length == 998 else b"500"), reply
    assert len(gw.queued()) == 1
    await queue_one(reader, writer, "AFTER")
    writer.close()
