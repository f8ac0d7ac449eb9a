"""Envelope addresses that would break every later hop are refused at MAIL and RCPT, on the
wire, instead of being accepted with 250 and failing on every delivery attempt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import Config
from tests.ingress.test_limits import read_reply
from tests.ingress.test_protocol import session

POISON = [
    (b"nul\x00x@example.org", "NUL"),
    (b"cr\rx@example.org", "bare CR"),
    (b"tab\tx@example.org", "TAB"),
    (b"bell\x07x@example.org", "control character"),
    (b"del\x7fx@example.org", "DEL"),
    (b"m\xc3\xbcller@example.org", "8-bit without SMTPUTF8"),
    (b"bad\xff\xfeutf8@example.org", "invalid UTF-8"),
]


@pytest.mark.parametrize(("address", "what"), POISON, ids=[what for _, what in POISON])
async def test_a_poison_sender_is_refused_at_mail(
        make_config: Callable[..., Config], start_gateway: Any, address: bytes, what: str) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    writer.write(b"MAIL FROM:<" + address + b">\r\n")
    assert (await read_reply(reader)).startswith(b"553 5.1.7"), what
    writer.write(b"MAIL FROM:<dr@example.com>\r\n")  # the session goes on
    assert (await read_reply(reader)).startswith(b"250")
    writer.close()


@pytest.mark.parametrize(("address", "what"), POISON, ids=[what for _, what in POISON])
async def test_a_poison_recipient_is_refused_at_rcpt(
        make_config: Callable[..., Config], start_gateway: Any, address: bytes, what: str) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    writer.write(b"MAIL FROM:<dr@example.com>\r\nRCPT TO:<" + address + b">\r\n")
    assert (await read_reply(reader)).startswith(b"250")
    assert (await read_reply(reader)).startswith(b"501 5.1.3"), what
    writer.close()


async def test_invalid_utf8_is_refused_at_rcpt_even_with_smtputf8(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    writer.write(b"MAIL FROM:<dr@example.com> SMTPUTF8\r\nRCPT TO:<z\xc3\xb6e@example.org>\r\n"
                 b"RCPT TO:<bad\xc3\x28@example.org>\r\n")
    assert (await read_reply(reader)).startswith(b"250")
    assert (await read_reply(reader)).startswith(b"250")  # valid UTF-8 with SMTPUTF8 is fine
    assert (await read_reply(reader)).startswith(b"501 5.1.3")
    writer.close()


async def test_control_characters_in_orcpt_are_refused(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    reader, writer = await session(gw)
    writer.write(b"MAIL FROM:<dr@example.com>\r\n"
                 b"RCPT TO:<p@example.org> ORCPT=rfc822;p+0D+0AX@example.org\r\n")
    assert (await read_reply(reader)).startswith(b"250")
    assert (await read_reply(reader)).startswith(b"501 5.5.4")
    writer.close()
