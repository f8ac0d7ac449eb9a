"""Three nodes as real `mailward run` processes behind HAProxy (PROXY protocol v2): mail sent to
the one address is spread over the nodes, each message delivered once, and each node sees the
real client. A node killed with kill -9 while it holds queued mail delivers all of it, once,
when it starts again (its spool is its own)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway.spool import QueueState
from tests.cluster.conftest import EGRESS, NODES, RECORDS, ClusterWorld
from tests.cluster.servers import HaProxy
from tests.conftest import GatewayProcess, free_port, open_test_spool, send
from tests.delivery.conftest import SENDER
from tests.polling import eventually
from tests.stages.dlp import builders as b

CLIENT = "127.0.0.55"  # the submitting server, as the nodes should see it
BALANCER = "127.0.0.100"


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


def node_process(world: ClusterWorld, node_id: str) -> GatewayProcess:
    port = free_port(NODES[node_id])
    config = world.node_config(node_id, sections={
        "listeners": [{"address": NODES[node_id], "port": port, "starttls": "optional",
                       "proxy_protocol": True, "proxy_from": [f"{BALANCER}/32", "127.0.0.1/32"]}],
        "metrics": {"listen": None}})
    return GatewayProcess(config, port, NODES[node_id])


async def submit_through(balancer: HaProxy, count: int, marker: str) -> None:
    for i in range(count):
        client = aiosmtplib.SMTP(hostname=balancer.address, port=balancer.port, start_tls=False,
                                 timeout=10, local_hostname="exchange.test", source_address=(CLIENT, 0))
        code, text = await send(client, SENDER, ["pat@clinic.test"],
                                b.message(f"{marker} {i}", sender=SENDER, to="pat@clinic.test"))
        assert code == 250, text
        client.close()


def bodies(sink: object) -> list[bytes]:
    return [m.content.split(b"\r\n\r\n", 1)[1] for m in sink.messages]  # type: ignore[attr-defined]


async def test_three_nodes_behind_haproxy_share_the_load_and_see_the_real_client(
        cluster_world: ClusterWorld, processes: list[GatewayProcess], tmp_path: Path) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    for node_id in NODES:
        process = node_process(cluster_world, node_id)
        await asyncio.to_thread(process.start)
        processes.append(process)
    balancer = HaProxy(tmp_path / "haproxy", BALANCER, [(p.host, p.port) for p in processes])
    balancer.start()
    try:
        await submit_through(balancer, 12, "lb")
        await eventually(lambda: len(sink.messages) == 12, timeout=60)
    finally:
        balancer.stop()
    assert len(set(bodies(sink))) == 12
    assert {m.peer for m in sink.messages} == set(EGRESS.values())  # every node took some
    assert all(f"[{CLIENT}]".encode() in m.content for m in sink.messages)  # Received: the real client


async def test_a_node_killed_with_mail_queued_delivers_it_once_after_restart(
        cluster_world: ClusterWorld, processes: list[GatewayProcess]) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    sink.always_data_reply = "451 4.3.0 try again later"  # everything stays queued meanwhile
    node_b = node_process(cluster_world, "node-b")
    await asyncio.to_thread(node_b.start)
    processes.append(node_b)
    balancer = HaProxy(cluster_world.tmp_path / "haproxy", BALANCER, [(node_b.host, node_b.port)])
    balancer.start()
    try:
        await submit_through(balancer, 8, "queued")
    finally:
        balancer.stop()
    await eventually(lambda: sink.transactions >= 8, timeout=30)  # each tried and deferred
    node_b.signal(signal.SIGKILL)
    await asyncio.to_thread(node_b.wait)
    sink.always_data_reply = None
    await asyncio.to_thread(node_b.start)
    await eventually(lambda: len(sink.messages) == 8, timeout=60)
    spool = open_test_spool(node_b.config_file)
    await eventually(lambda: not any(spool.ids(state) for state in
                                     (QueueState.INCOMING, QueueState.ACTIVE, QueueState.DEFERRED)))
    assert len(sink.messages) == 8 and len(set(bodies(sink))) == 8  # each once, none left to send
