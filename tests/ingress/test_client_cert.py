"""TLS client certificates as relay permission (how an Exchange Online connector authenticates)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import aiosmtplib
import pytest
import trustme

from gateway.config import Config
from tests.conftest import client_context, message, send
from tests.polling import free_port


def cert_config(make_config: Callable[..., Config]) -> Config:
    return make_config(relay={"networks": ["127.0.0.1/32"],
                              "client_cert_subjects": ["mail.protection.outlook.com",
                                                       "*.relays.example.net"]})


async def test_matching_client_certificate_may_relay_from_outside(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(cert_config(make_config))
    cert = ca.issue_cert("mail.protection.outlook.com")
    code, text = await send(gw.client(source="127.0.0.99"), "dr@example.com", ["p@example.org"],
                            message("C1"), starttls=client_context(ca, cert))
    assert code == 250
    stored = gw.spool.load(text.rsplit(" ", 1)[1])
    assert stored.client.relay_reason == "certificate"
    assert stored.client.cert_subject == "mail.protection.outlook.com"


async def test_wildcard_subject_matches_one_label(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(cert_config(make_config))
    one_label = ca.issue_cert("mx1.relays.example.net")
    code, _ = await send(gw.client(source="127.0.0.99"), "a@example.com", ["p@example.org"],
                         message(), starttls=client_context(ca, one_label))
    assert code == 250
    two_labels = ca.issue_cert("a.mx1.relays.example.net")
    code, _ = await send(gw.client(source="127.0.0.99"), "a@example.com", ["p@example.org"],
                         message(), starttls=client_context(ca, two_labels))
    assert code == 554


async def test_client_certificate_with_other_subject_is_refused(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(cert_config(make_config))
    cert = ca.issue_cert("intruder.example.com")
    code, text = await send(gw.client(source="127.0.0.99"), "dr@example.com", ["p@example.org"],
                            message(), starttls=client_context(ca, cert))
    assert (code, text) == (554, "5.7.1 <p@example.org>: Relay access denied")
    assert gw.queued() == []


async def test_certificate_from_an_untrusted_ca_ends_the_handshake(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(cert_config(make_config))
    rogue_cert = trustme.CA().issue_cert("mail.protection.outlook.com")
    client = gw.client(source="127.0.0.99")
    await client.connect()
    # A presented certificate must verify; one that does not ends the session (fail closed).
    with pytest.raises((aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, ssl.SSLError)):
        await client.starttls(tls_context=client_context(ca, rogue_cert))
        await client.ehlo()
        await client.mail("dr@example.com")
    assert gw.queued() == []


async def test_a_listener_with_its_own_relay_block_relays_only_for_it(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    """Port 25 for the Exchange Online certificate only; 587 keeps the global rules."""
    exchange_only = {"address": "127.0.0.1", "port": free_port(), "starttls": "optional", "auth": "off",
                     "name": "mx", "relay": {"networks": [], "auth": False,
                                             "client_cert_subjects": ["mail.protection.outlook.com"]}}
    submission = {"address": "127.0.0.1", "port": free_port(), "starttls": "optional", "auth": "optional",
                  "name": "submission"}
    gw = await start_gateway(make_config(listeners=[exchange_only, submission],
                                         relay={"networks": ["127.0.0.0/8"]}))
    # From the global relay.networks: refused on the certificate-only listener ...
    code, _ = await send(gw.client(index=0), "dr@example.com", ["p@example.org"], message("L1"))
    assert code == 554
    # ... allowed on the other one.
    code, _ = await send(gw.client(index=1), "dr@example.com", ["p@example.org"], message("L2"))
    assert code == 250
    # The connector's certificate relays on the certificate-only listener.
    cert = ca.issue_cert("mail.protection.outlook.com")
    code, text = await send(gw.client(index=0, source="127.0.0.99"), "dr@example.com", ["p@example.org"],
                            message("L3"), starttls=client_context(ca, cert))
    assert code == 250
    assert gw.spool.load(text.rsplit(" ", 1)[1]).client.relay_reason == "certificate"
