"""Redis killed (kill -9) in the middle of a load: every node keeps sending within its share of
each limit (limit / live nodes), says so, loses nothing, and counts in Redis again once a new
Redis answers on the same address.

Connections open at the moment Redis dies count against their node's share; they finish as
usual. Only once they have, do the shares alone decide (a node cannot know what the others had
open), which is when the test starts measuring the fallback."""

from __future__ import annotations

import logging

import pytest

from gateway.state.redis import RedisLimits
from tests.cluster.conftest import NODES, ClusterWorld
from tests.cluster.servers import RedisServer
from tests.cluster.test_shared_limits import LIMITED, slow_sink, submit
from tests.conftest import RunningGateway
from tests.polling import eventually


def limits(node: RunningGateway) -> RedisLimits:
    delivery = node.gateway.delivery
    assert delivery is not None and isinstance(delivery.limits, RedisLimits)
    return delivery.limits


async def test_redis_killed_mid_load_falls_back_to_shares_and_recovers(
        cluster_world: ClusterWorld, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mailward.cluster")
    sink = await slow_sink(cluster_world)
    nodes = [await cluster_world.node(node_id, shaping=LIMITED, connection_idle_time="1s")
             for node_id in NODES]
    # Each node has seen the three heartbeats: its fallback share of 3 connections is 1.
    await eventually(lambda: all(limits(n).live_nodes == 3 for n in nodes), timeout=20)
    await submit(nodes, 30, "before")
    await eventually(lambda: len(sink.messages) >= 5, timeout=30)
    redis_server.kill()
    await eventually(lambda: all(limits(n).down for n in nodes), timeout=20)
    await eventually(lambda: len(sink.messages) == 30 and sink.open_connections == 0, timeout=60)
    sink.max_open_connections = 0
    await submit(nodes, 30, "during")
    await eventually(lambda: len(sink.messages) == 60, timeout=90)
    assert sink.max_open_connections <= 3
    assert "event=cluster_redis_unreachable" in caplog.text

    redis_server.start()  # empty, on the same port
    await eventually(lambda: not any(limits(n).down for n in nodes) and sink.open_connections == 0,
                     timeout=20)
    assert "event=cluster_redis_back" in caplog.text
    sink.max_open_connections = 0
    await submit(nodes, 15, "after")
    await eventually(lambda: len(sink.messages) == 75, timeout=60)
    assert sink.max_open_connections <= 3
    bodies = {m.content.split(b"\r\n\r\n", 1)[1] for m in sink.messages}
    assert len(bodies) == 75  # each once: nothing lost, nothing twice
