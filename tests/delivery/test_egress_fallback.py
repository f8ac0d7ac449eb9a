"""Every connection, first or retry, leaves from the egress IP the pool chose and greets with
its EHLO name: also the reconnect after a certificate that does not verify (levels may and
encrypt) and the plaintext retry after a failed TLS handshake (level may)."""

from __future__ import annotations

import ssl

import pytest
import trustme

from tests.conftest import send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.smtpsink import Sink, start_sink
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
POOLS = {"a": {"ips": [{"address": "127.0.0.10", "ehlo": "a1.mailward.test"}]}}


async def broken_tls_sink(world: MailWorld, ca: trustme.CA) -> Sink:
    """Offers STARTTLS but only TLS 1.2 suites with SHA-1 MACs, which no client of ours accepts:
    the handshake fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA")
    ca.issue_cert("mx.clinic.test").configure_cert(context)
    sink, server = await start_sink("127.0.0.21", world.port, tls_context=context)
    world.servers.append(server)
    return sink


@pytest.mark.parametrize(("case", "level"), [("wrong-name", "may"), ("wrong-name", "encrypt"),
                                             ("handshake-fails", "may")])
async def test_a_tls_fallback_keeps_the_pools_address_and_ehlo(
        world: MailWorld, ca: trustme.CA, case: str, level: str) -> None:
    await world.start_dns(RECORDS)
    if case == "wrong-name":
        sink = await world.sink("127.0.0.21", tls_name="somebody-else.test")
    else:
        sink = await broken_tls_sink(world, ca)
    gateway = await world.gateway(pools=POOLS, tls_policy={"clinic.test": level})
    code, text = await send(gateway.client(), SENDER, ["pat@clinic.test"],
                            b.message("note", sender=SENDER, to="pat@clinic.test"))
    assert code == 250, text
    await eventually(lambda: sink.messages, timeout=20)
    [received] = sink.messages
    assert (received.peer, received.helo) == ("127.0.0.10", "a1.mailward.test")
    assert (received.tls_version is None) == (case == "handshake-fails")
