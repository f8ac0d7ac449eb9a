"""Per-destination shaping: a connection limit holds across IPs; a throttling reply pauses the
destination, which is then drained."""

from __future__ import annotations

import asyncio

from tests.conftest import send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
THREE_IPS = {"p": {"ips": [{"address": f"127.0.0.1{i}", "ehlo": f"m{i}.mailward.test"} for i in range(3)]}}


async def submit_all(world: MailWorld, gateway: object, count: int) -> None:
    async def one(i: int) -> None:
        code, text = await send(gateway.client(), SENDER, ["pat@clinic.test"],  # type: ignore[attr-defined]
                                b.message(f"note {i}", sender=SENDER, to="pat@clinic.test"))
        assert code == 250, text
    await asyncio.gather(*(one(i) for i in range(count)))


async def test_a_destination_limited_to_two_connections_never_sees_a_third(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    sink.data_delay = 0.05  # slow enough that deliveries overlap
    gateway = await world.gateway(pools=THREE_IPS, shaping={
        "clinic": {"domains": ["clinic.test"], "max_connections": 2, "messages_per_connection": 3}})
    await submit_all(world, gateway, 16)
    await eventually(lambda: len(sink.messages) == 16)
    assert sink.max_open_connections == 2
    assert len({m.peer for m in sink.messages}) >= 2  # several IPs, one limit


async def test_without_a_limit_the_same_load_opens_more_connections(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    sink.data_delay = 0.05
    gateway = await world.gateway(pools=THREE_IPS)
    await submit_all(world, gateway, 16)
    await eventually(lambda: len(sink.messages) == 16)
    assert sink.max_open_connections > 2


async def test_a_throttling_reply_pauses_the_destination_then_it_is_drained(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    sink.data_replies.append("421 4.7.0 Too many messages from your IP, slow down")
    gateway = await world.gateway(shaping={"clinic": {"domains": ["clinic.test"], "backoff": "1s"}})
    await submit_all(world, gateway, 1)
    await eventually(lambda: sink.transactions == 1)
    throttled_at = sink.data_times[0]
    await submit_all(world, gateway, 3)
    await eventually(lambda: len(sink.messages) == 4, timeout=20)
    # Nothing was sent to the destination while it was paused.
    assert all(t - throttled_at >= 0.9 for t in sink.data_times[1:]), \
        [round(t - throttled_at, 2) for t in sink.data_times]
