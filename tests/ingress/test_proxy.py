"""HAProxy PROXY protocol v1 and v2 on a listener behind a load balancer: relay control sees the
real client; only the configured balancers may send the header."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Callable
from typing import Any

from gateway.config import Config
from tests.ingress.test_limits import read_reply

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(client: str) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode()


def v2(client: str) -> bytes:
    addresses = ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address("127.0.0.1").packed
    body = addresses + struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def proxied_config(make_config: Callable[..., Config]) -> Config:
    return make_config(listeners=[{"address": "127.0.0.1", "port": 0, "starttls": "optional",
                                   "auth": "off", "proxy_protocol": True, "proxy_from": ["127.0.0.1/32"]}],
                       relay={"networks": ["203.0.113.0/24"], "users_file": "var/users.yaml"})


async def transaction(port: int, header: bytes, source: str = "127.0.0.1") -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(header)
    replies = [await read_reply(reader)]
    if replies[0]:
        for command in (b"EHLO lb.test", b"MAIL FROM:<dr@example.com>", b"RCPT TO:<p@example.org>"):
            writer.write(command + b"\r\n")
            replies.append(await read_reply(reader))
    writer.close()
    return replies


async def test_v1_and_v2_headers_give_the_real_client_to_relay_control(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(proxied_config(make_config))
    port = gw.address()[1]
    for header in (v1("203.0.113.7"), v2("203.0.113.8")):
        replies = await transaction(port, header)
        assert replies[0].startswith(b"220") and replies[-1].startswith(b"250"), replies
    # A real client outside the relay networks is refused, though the balancer itself is local.
    assert (await transaction(port, v1("198.51.100.9")))[-1].startswith(b"554 5.7.1")


async def test_a_header_from_elsewhere_or_none_at_all_is_refused(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(proxied_config(make_config))
    port = gw.address()[1]
    assert await transaction(port, v1("203.0.113.7"), source="127.0.0.5") == [b""]  # not a balancer
    assert await transaction(port, b"EHLO direct.test\r\n") == [b""]  # no PROXY header: closed
