"""Egress pools and warm-up, end to end: receivers on loopback record the source address and
EHLO name of each message."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from gateway.reputation import egress
from gateway.spool import QueueState
from tests.conftest import RunningGateway, mailward_ok, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
POOLS = {"a": {"ips": [{"address": "127.0.0.10", "ehlo": "a1.mailward.test"}]},
         "b": {"ips": [{"address": "127.0.0.11", "ehlo": "b1.mailward.test"},
                       {"address": "127.0.0.12", "ehlo": "b2.mailward.test"}]}}
EHLO = {"127.0.0.10": "a1.mailward.test", "127.0.0.11": "b1.mailward.test", "127.0.0.12": "b2.mailward.test"}


@pytest.fixture(autouse=True)
def _egress_state_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "STATE_CHECK_INTERVAL", 0.0)


async def submit(gateway: RunningGateway, count: int, sender: str = SENDER, to: str = "pat@clinic.test",
                 headers: bytes = b"") -> None:
    for i in range(count):
        code, text = await send(gateway.client(), sender, [to],
                                headers + b.message(f"note {i}", sender=sender, to=to))
        assert code == 250, text



async def start(world: MailWorld, **delivery: Any) -> tuple[RunningGateway, Sink]:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    gateway = await world.gateway(**delivery)
    return gateway, sink


async def test_each_pool_leaves_from_its_own_ips_with_their_ehlo_names(world: MailWorld) -> None:
    gateway, sink = await start(world, pools=POOLS, pool_selection={
        "default": "a", "sender_domains": {"news.hospital.test": "b"}})
    await submit(gateway, 4)
    await eventually(lambda: len(sink.messages) == 4)
    assert {(m.peer, m.helo) for m in sink.messages} == {("127.0.0.10", "a1.mailward.test")}
    await submit(gateway, 30, sender="letters@news.hospital.test")
    await eventually(lambda: len(sink.messages) == 34)
    from_b = sink.messages[4:]
    assert {m.peer for m in from_b} == {"127.0.0.11", "127.0.0.12"}
    assert all(m.helo == EHLO[m.peer] for m in from_b)


async def test_the_pool_header_chooses_the_pool_and_is_removed(world: MailWorld) -> None:
    gateway, sink = await start(world, pools=POOLS, pool_selection={"default": "a"})
    await submit(gateway, 3, headers=b"X-Mailward-Pool: b\r\n")
    await eventually(lambda: len(sink.messages) == 3)
    assert {m.peer for m in sink.messages} <= {"127.0.0.11", "127.0.0.12"}
    assert not any(b"X-Mailward-Pool" in m.content for m in sink.messages)


async def test_a_drained_ip_takes_no_new_connections(world: MailWorld) -> None:
    gateway, sink = await start(world, pools=POOLS, pool_selection={"default": "b"},
                                connection_idle_time="0s")
    config_file = gateway.gateway.config.source
    assert config_file is not None
    await mailward_ok(config_file, "pool", "drain", "127.0.0.12")
    await submit(gateway, 12)
    await eventually(lambda: len(sink.messages) == 12)
    assert {m.peer for m in sink.messages} == {"127.0.0.11"}
    assert "drain" in await mailward_ok(config_file, "pool", "status")


def warmup_pool(at_cap: str, cap: int) -> dict[str, Any]:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    ips = [{"address": "127.0.0.10", "ehlo": "w1.mailward.test", "warmup": "ramp", "warmup_start": today}]
    if at_cap == "spill":
        ips.append({"address": "127.0.0.11", "ehlo": "w2.mailward.test"})
    return {"pools": {"w": {"ips": ips, "at_cap": at_cap}}, "warmup": {"ramp": {"per_day": [cap, cap * 10]}}}


async def test_a_warm_up_cap_defers_the_next_message_and_survives_a_restart(world: MailWorld) -> None:
    settings = warmup_pool("wait", 3)
    gateway, sink = await start(world, **settings)
    await submit(gateway, 4)
    await eventually(lambda: len(sink.messages) == 3 and len(gateway.queued(QueueState.DEFERRED)) == 1)
    status = gateway.spool.load(gateway.queued(QueueState.DEFERRED)[0]).statuses[0]
    assert status.dsn == "4.7.0" and "warm-up cap" in status.reply
    await gateway.gateway.drain()
    restarted = await world.gateway(**settings)
    await submit(restarted, 1)
    await eventually(lambda: len(restarted.queued(QueueState.DEFERRED)) == 2)
    assert len(sink.messages) == 3


async def test_an_ip_at_its_cap_spills_to_the_next_one(world: MailWorld) -> None:
    gateway, sink = await start(world, **warmup_pool("spill", 2))
    await submit(gateway, 8)
    await eventually(lambda: len(sink.messages) == 8)
    assert sum(m.peer == "127.0.0.10" for m in sink.messages) <= 2
    assert {m.helo for m in sink.messages if m.peer == "127.0.0.11"} == {"w2.mailward.test"}
