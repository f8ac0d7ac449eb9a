"""Limits that hold for the cluster as one sender: a destination's connection limit and an IP's
warm-up cap are counted in Redis, across nodes; without the cluster config each node counts its
own, and the same load goes over."""

from __future__ import annotations

import asyncio
import datetime

from gateway.spool import QueueState
from tests.cluster.conftest import EGRESS, NODES, RECORDS, ClusterWorld
from tests.conftest import RunningGateway, send
from tests.delivery.conftest import SENDER
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

LIMITED = {"clinic": {"domains": ["clinic.test"], "max_connections": 3}}


async def submit(nodes: list[RunningGateway], count: int, marker: str = "note") -> None:
    """`count` messages to pat@clinic.test, spread over `nodes` in turn, all at once."""
    async def one(i: int) -> None:
        node = nodes[i % len(nodes)]
        code, text = await send(node.client(), SENDER, ["pat@clinic.test"],
                                b.message(f"{marker} {i}", sender=SENDER, to="pat@clinic.test"))
        assert code == 250, text
    await asyncio.gather(*(one(i) for i in range(count)))


async def slow_sink(world: ClusterWorld) -> Sink:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    sink.data_delay = 0.05  # slow enough that deliveries from all nodes overlap
    return sink


async def test_a_destination_limit_of_three_holds_across_three_nodes(cluster_world: ClusterWorld) -> None:
    sink = await slow_sink(cluster_world)
    nodes = [await cluster_world.node(node_id, shaping=LIMITED, connection_idle_time="1s")
             for node_id in NODES]
    await submit(nodes, 45)
    await eventually(lambda: len(sink.messages) == 45, timeout=60)
    assert sink.max_open_connections <= 3
    assert {m.peer for m in sink.messages} == set(EGRESS.values())  # every node sent some


async def test_without_the_cluster_the_same_load_opens_more(cluster_world: ClusterWorld) -> None:
    sink = await slow_sink(cluster_world)
    nodes = [await cluster_world.node(node_id, cluster=False, shaping=LIMITED, connection_idle_time="1s")
             for node_id in NODES]
    await submit(nodes, 45)
    await eventually(lambda: len(sink.messages) == 45, timeout=60)
    assert sink.max_open_connections > 3


def warmup(cap: int) -> dict[str, object]:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    return {"pools": {"warm": {"ips": [{"address": "127.0.0.10", "ehlo": "w.mailward.test", "warmup": "ramp",
                                        "warmup_start": today}], "at_cap": "wait"}},
            "warmup": {"ramp": {"per_day": [cap, cap * 10]}},
            "shaping": {"clinic": {"domains": ["clinic.test"]}}}


async def test_a_warm_up_cap_of_ten_is_shared_by_every_node(cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    nodes = [await cluster_world.node(node_id, **warmup(10)) for node_id in NODES]
    await submit(nodes, 15)
    await eventually(lambda: len(sink.messages) == 10)
    # The other five wait for tomorrow on whichever node has them.
    await eventually(lambda: sum(len(n.queued(QueueState.DEFERRED)) for n in nodes) == 5)
    assert len(sink.messages) == 10
    assert {m.peer for m in sink.messages} == {"127.0.0.10"}


async def test_a_throttling_reply_seen_by_node_a_pauses_the_destination_for_node_b(
        cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    sink.data_replies.append("421 4.7.0 Too many messages from your IP, slow down")
    rule = {"clinic": {"domains": ["clinic.test"], "backoff": "2s"}}
    node_a = await cluster_world.node("node-a", shaping=rule)
    node_b = await cluster_world.node("node-b", shaping=rule)
    await submit([node_a], 1, "throttled")
    await eventually(lambda: sink.transactions == 1)
    throttled_at = sink.data_times[0]
    await submit([node_b], 3, "from b")
    await eventually(lambda: len(sink.messages) == 4, timeout=30)
    # Node B sent nothing to the destination while node A's throttling paused it.
    assert all(t - throttled_at >= 1.9 for t in sink.data_times[1:]), \
        [round(t - throttled_at, 2) for t in sink.data_times]
