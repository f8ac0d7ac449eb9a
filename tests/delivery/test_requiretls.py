"""REQUIRETLS (RFC 8689): offered only over TLS, the MAIL parameter is kept with the message, and
such a message goes only over verified TLS to a next hop that supports REQUIRETLS; otherwise
the sender gets a bounce, and no other protection method stands in."""

from __future__ import annotations

import aiosmtplib
import trustme

from gateway.spool import QueueState
from tests.conftest import client_context, message
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.11"]}


async def submit_requiretls(gateway: object, ca: trustme.CA, marker: str) -> aiosmtplib.SMTPResponse:
    client = gateway.client()  # type: ignore[attr-defined]
    await client.connect()
    await client.ehlo()
    assert "requiretls" not in client.esmtp_extensions  # not before STARTTLS
    await client.starttls(tls_context=client_context(ca))
    await client.ehlo()
    assert "requiretls" in client.esmtp_extensions
    await client.mail(SENDER, options=["REQUIRETLS"])
    await client.rcpt("pat@clinic.test")
    reply = await client.data(message(marker))
    await client.quit()
    return reply


async def test_requiretls_is_refused_without_a_tls_session(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    gateway = await world.gateway(paused=True)
    client = gateway.client()
    await client.connect()
    await client.ehlo()
    reply = await client.execute_command(f"MAIL FROM:<{SENDER}> REQUIRETLS".encode())
    assert (reply.code, reply.message.split()[0]) == (530, "5.7.10")
    await client.quit()


async def test_requiretls_message_goes_over_verified_tls_with_the_parameter(
        world: MailWorld, ca: trustme.CA) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.11", tls_name="mx.clinic.test")
    sink.offer_requiretls = True
    gateway = await world.gateway()
    reply = await submit_requiretls(gateway, ca, "REQ-OK")
    assert reply.code == 250
    [received] = await eventually(lambda: sink.messages)
    assert received.tls_version is not None and sink.requiretls_seen == 1


async def test_next_hop_without_requiretls_bounces_the_message(world: MailWorld, ca: trustme.CA) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.11", tls_name="mx.clinic.test")  # verified TLS, no REQUIRETLS
    gateway = await world.gateway()
    assert (await submit_requiretls(gateway, ca, "REQ-NO")).code == 250
    [report] = await eventually(world.dsns)
    assert "5.7.30" in report.as_string() and sink.messages == []


async def test_unverified_next_hop_is_not_used_for_a_requiretls_message(
        world: MailWorld, ca: trustme.CA) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.11", tls_name="someone-else.test")
    sink.offer_requiretls = True
    gateway = await world.gateway()
    assert (await submit_requiretls(gateway, ca, "REQ-UNVERIFIED")).code == 250
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert sink.messages == []
