"""DANE with a real validating resolver: Debian's unbound, with a zone signed here (ECDSA P-256,
NSEC) as its trust anchor, in front of the gateway. TLSA records of the signed zone come with the
AD bit and are enforced; the same records in an unsigned zone are ignored."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.spool import QueueState
from tests.conftest import RunningGateway, message, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.delivery.test_dane import other_key_sha256, spki_sha256
from tests.dnsserver import Unbound, start_dns, start_signed_zone
from tests.polling import eventually

pytestmark = pytest.mark.skipif(shutil.which("unbound") is None and not Path("/usr/sbin/unbound").exists(),
                                reason="scripts/test installs unbound")

Records = dict[tuple[str, str], list[str]]


class Resolvers:
    """The signed zone dane.test (127.0.0.55), the unsigned zone insecure.test (127.0.0.56) and
    unbound (127.0.0.54) validating the first with its key as trust anchor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.unbound: Unbound | None = None
        self.transports: list[asyncio.BaseTransport] = []

    async def start(self, signed: Records, unsigned: Records) -> Unbound:
        zone, transport, zone_port = await start_signed_zone("127.0.0.55", "dane.test", signed)
        plain, plain_port = await start_dns("127.0.0.56", unsigned)
        assert plain.transport is not None
        self.transports += [transport, plain.transport]
        self.unbound = Unbound(self.directory, "127.0.0.54", zone, "127.0.0.55", zone_port,
                               unsigned={"insecure.test": ("127.0.0.56", plain_port)})
        self.unbound.start()
        await eventually(self.unbound.started, timeout=20)
        return self.unbound

    def stop(self) -> None:
        if self.unbound is not None:
            self.unbound.stop()
        for transport in self.transports:
            transport.close()


@pytest.fixture
async def resolvers(tmp_path: Path) -> AsyncIterator[Resolvers]:
    started = Resolvers(tmp_path / "unbound")
    yield started
    started.stop()


async def deliver(world: MailWorld, unbound: Unbound, to: str, marker: str,
                  caplog: pytest.LogCaptureFixture) -> RunningGateway:
    gateway = await world.gateway(nameservers=[f"127.0.0.54:{unbound.port}"])
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await send(gateway.client(), SENDER, [to], message(marker))
        await eventually(lambda: any("event=delivery " in r.getMessage() for r in caplog.records))
    return gateway


async def test_signed_tlsa_record_authenticates_the_mx(world: MailWorld, resolvers: Resolvers,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    receiver = await world.sink("127.0.0.25", tls_name="not-the-mx-name.test")
    assert world.last_certificate is not None
    pin = spki_sha256(world.last_certificate.cert_chain_pems[0].bytes())
    unbound = await resolvers.start(
        {("dane.test", "MX"): ["10 mx.dane.test."], ("mx.dane.test", "A"): ["127.0.0.25"],
         (f"_{world.port}._tcp.mx.dane.test", "TLSA"): [f"3 1 1 {pin}"]}, {})
    await deliver(world, unbound, "pat@dane.test", "SIGNED-OK", caplog)
    await eventually(lambda: receiver.messages)
    line = next(r.getMessage() for r in caplog.records if "event=delivery " in r.getMessage())
    assert "/dane" in line and "status=sent" in line


async def test_signed_mismatching_tlsa_record_stops_delivery(world: MailWorld, resolvers: Resolvers,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    receiver = await world.sink("127.0.0.25", tls_name="mx.dane.test")
    unbound = await resolvers.start(
        {("dane.test", "MX"): ["10 mx.dane.test."], ("mx.dane.test", "A"): ["127.0.0.25"],
         (f"_{world.port}._tcp.mx.dane.test", "TLSA"): [f"3 1 1 {other_key_sha256()}"]}, {})
    gateway = await deliver(world, unbound, "pat@dane.test", "SIGNED-BAD", caplog)
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []


async def test_tlsa_record_of_an_unsigned_zone_is_ignored(world: MailWorld, resolvers: Resolvers,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    receiver = await world.sink("127.0.0.25", tls_name="someone-else.test")
    unbound = await resolvers.start(
        {("mx.dane.test", "A"): ["127.0.0.25"]},
        {("insecure.test", "MX"): ["10 mx.insecure.test."], ("mx.insecure.test", "A"): ["127.0.0.25"],
         (f"_{world.port}._tcp.mx.insecure.test", "TLSA"): [f"3 1 1 {other_key_sha256()}"]})
    await deliver(world, unbound, "pat@insecure.test", "UNSIGNED", caplog)
    await eventually(lambda: receiver.messages)
    line = next(r.getMessage() for r in caplog.records if "event=delivery " in r.getMessage())
    assert "/unverified" in line
