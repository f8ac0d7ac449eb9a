"""Relay control over real SMTP: allowed networks, refused strangers, sender domains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trustme

from gateway.config import Config
from tests.conftest import client_context, message, send


async def test_client_in_relay_network_is_accepted_and_queued(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config())
    code, text = await send(gw.client(), "dr@example.com", ["patient@example.org"], message("A1"))
    assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
    queue_id = text.rsplit(" ", 1)[1]
    assert gw.queued() == [queue_id]
    stored = gw.spool.load(queue_id)
    assert stored.envelope.sender == "dr@example.com"
    assert [r.address for r in stored.envelope.recipients] == ["patient@example.org"]
    assert stored.client.relay_reason == "network"
    assert stored.message_id == "<A1@example.com>"


async def test_client_outside_relay_networks_is_refused_at_rcpt(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(relay={"networks": ["127.0.0.1/32"]}))
    code, text = await send(gw.client(source="127.0.0.99"), "x@example.com",
                            ["victim@example.org"], message("R1"))
    assert code == 554
    assert text == "5.7.1 <victim@example.org>: Relay access denied"
    assert gw.queued() == []


async def test_stranger_cannot_relay_even_after_starttls(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(make_config(relay={"networks": ["127.0.0.1/32"]}))
    code, _ = await send(gw.client(source="127.0.0.99"), "x@example.com", ["v@example.org"],
                         message("R2"), starttls=client_context(ca))
    assert code == 554
    assert gw.queued() == []


async def test_sender_outside_sender_domains_is_refused(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(relay={"sender_domains": ["hospital.example"]}))
    code, text = await send(gw.client(), "someone@elsewhere.example", ["p@example.org"], message())
    assert code == 553 and text.startswith("5.7.1 <someone@elsewhere.example>")
    code, _ = await send(gw.client(), "dr@Hospital.Example", ["p@example.org"], message())
    assert code == 250
    assert len(gw.queued()) == 1


async def test_received_header_records_client_and_tls_but_not_the_user(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(make_config())
    code, text = await send(gw.client(), "dr@example.com", ["p@example.org"], message("H1"),
                            starttls=client_context(ca))
    assert code == 250
    stored = gw.spool.content(text.rsplit(" ", 1)[1])
    received = stored.split(b"\r\n\r\n")[0].split(b"\r\nFrom:")[0].decode()
    assert received.startswith("Received: from client.test ([127.0.0.1])")
    assert "by mailward.test (Mailward)" in received
    assert "using TLSv1.3 with cipher" in received
    assert "with ESMTPS id" in received
    assert "for <p@example.org>" in received
