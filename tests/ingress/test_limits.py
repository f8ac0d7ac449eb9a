"""Limits with the right reply codes: size, recipients, connections, timeouts, errors, STARTTLS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiosmtplib
import pytest
import trustme

from gateway.config import Config
from tests.conftest import client_context, message, send


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole (possibly multi-line) reply."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            break
        lines.append(line)
        if line[3:4] != b"-":
            break
    return b"".join(lines)


async def test_declared_size_over_limit_is_refused_at_mail(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"max_message_size": "10KB"}))
    client = gw.client()
    await client.connect()
    await client.ehlo()
    assert client.esmtp_extensions["size"] == str(10 * 1024)
    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await client.mail("a@example.com", options=["SIZE=20000"])
    assert (info.value.code, info.value.message[:5]) == (552, "5.3.4")


async def test_oversized_data_is_refused_and_not_queued(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"max_message_size": "10KB"}))
    code, text = await send(gw.client(), "a@example.com", ["p@example.org"], message(size=20000))
    assert code == 552 and text.startswith("5.3.4")
    assert gw.queued() == []


async def test_recipients_over_the_limit_get_452_and_the_rest_is_accepted(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"max_recipients": 3}))
    client = gw.client()
    await client.connect()
    await client.ehlo()
    await client.mail("a@example.com")
    for i in range(3):
        assert (await client.rcpt(f"p{i}@example.org")).code == 250
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
        await client.rcpt("p3@example.org")
    assert (info.value.code, info.value.message) == (452, "4.5.3 Error: too many recipients")
    assert (await client.data(message())).code == 250
    stored = gw.spool.load(gw.queued()[0])
    assert len(stored.envelope.recipients) == 3
    await client.quit()


async def test_connections_per_ip_over_the_limit_get_421(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"max_connections_per_ip": 2},
                                         relay={"networks": ["127.0.0.200/32"]}))
    host, port = gw.address()
    opened = [await asyncio.open_connection(host, port) for _ in range(2)]
    for reader, _ in opened:
        assert (await read_reply(reader)).startswith(b"220 ")
    reader, writer = await asyncio.open_connection(host, port)
    assert (await read_reply(reader)).startswith(b"421 4.7.0 mailward.test Error: too many "
                                                 b"connections from your address")
    assert await reader.read() == b""
    # Another client address still gets in.
    other_reader, other_writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
    assert (await read_reply(other_reader)).startswith(b"220 ")
    for _, w in [*opened, (None, writer), (None, other_writer)]:
        w.close()


async def test_total_connections_over_the_limit_get_421(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"max_connections": 1}))
    host, port = gw.address()
    first_reader, first_writer = await asyncio.open_connection(host, port)
    assert (await read_reply(first_reader)).startswith(b"220 ")
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.3", 0))
    assert (await read_reply(reader)).startswith(b"421 4.7.0 mailward.test Error: too many connections")
    first_writer.close()
    writer.close()


async def test_idle_client_is_disconnected_after_command_timeout(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"command_timeout": 1}))
    reader, writer = await asyncio.open_connection(*gw.address())
    assert (await read_reply(reader)).startswith(b"220 ")
    # No command is sent: the server says why and closes the connection by itself (then EOF).
    assert await asyncio.wait_for(reader.read(), 10) == b"421 4.4.2 mailward.test Error: timeout exceeded\r\n"
    writer.close()


async def test_too_many_errors_disconnect_the_client(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(limits={"max_errors": 3}))
    reader, writer = await asyncio.open_connection(*gw.address())
    await read_reply(reader)
    writer.write(b"EHLO c.test\r\n")
    await read_reply(reader)
    replies = []
    for _ in range(3):
        writer.write(b"MAIL FROM:<broken\r\n")
        replies.append(await read_reply(reader))
    assert all(r.startswith(b"5") for r in replies)
    assert (await read_reply(reader)).startswith(b"421 4.7.0 mailward.test Error: too many errors")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_starttls_required_listener_refuses_mail_in_clear(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    config = make_config(listeners=[{"address": "127.0.0.1", "port": 0, "starttls": "required",
                                     "auth": "off"}])
    gw = await start_gateway(config)
    client = gw.client()
    await client.connect()
    await client.ehlo()
    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await client.mail("a@example.com")
    assert (info.value.code, info.value.message) == (530, "5.7.0 Must issue a STARTTLS command first")
    client.close()
    code, _ = await send(gw.client(), "a@example.com", ["p@example.org"], message(),
                         starttls=client_context(ca))
    assert code == 250


async def test_starttls_off_listener_does_not_offer_starttls(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    config = make_config(listeners=[{"address": "127.0.0.1", "port": 0, "starttls": "off",
                                     "auth": "off"}])
    gw = await start_gateway(config)
    client = gw.client()
    await client.connect()
    await client.ehlo()
    assert not client.supports_extension("starttls")
    await client.quit()
