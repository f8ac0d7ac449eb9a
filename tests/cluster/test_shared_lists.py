"""Lists in PostgreSQL: a hard bounce on one node stops mail to that recipient from every node,
`mailward suppress` on any node sees and changes the same list, and while the database is away no
delivery skips the check (it waits), nothing accepted is lost, and the audit records written
meanwhile reach the cluster's copy in order once it is back. An API token made on one node
works on every node, and one removed stops working everywhere."""

from __future__ import annotations

import json

import aiohttp
import psycopg

from gateway.spool import QueueState
from tests.cluster.conftest import RECORDS, ClusterWorld, config_of
from tests.cluster.servers import PostgresServer
from tests.conftest import RunningGateway, free_port, mailward_ok, send
from tests.delivery.conftest import SENDER
from tests.polling import eventually
from tests.stages.dlp import builders as b


async def submit(node: RunningGateway, to: str, body: str = "note") -> None:
    code, text = await send(node.client(), SENDER, [to], b.message(body, sender=SENDER, to=to))
    assert code == 250, text


async def test_a_hard_bounce_seen_by_node_a_suppresses_the_recipient_for_node_b(
        cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    sink.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    node_a = await cluster_world.node("node-a")
    node_b = await cluster_world.node("node-b")
    await submit(node_a, "gone@clinic.test")
    await eventually(lambda: len(cluster_world.dsns()) == 1)

    await submit(node_b, "gone@clinic.test")
    await eventually(lambda: len(cluster_world.dsns()) == 2)
    assert sink.rcpt_seen.count("gone@clinic.test") == 1  # node B never tried it
    assert "suppression list" in str(cluster_world.dsns()[-1])
    listed = json.loads(await mailward_ok(config_of(node_b), "suppress", "list", "--json"))
    assert [(e["address"], e["reason"]) for e in listed] == [("gone@clinic.test", "bounce")]

    # Removed by hand on node B: node A writes to it again.
    await mailward_ok(config_of(node_b), "suppress", "remove", "gone@clinic.test")
    await submit(node_a, "gone@clinic.test")
    await eventually(lambda: sink.rcpt_seen.count("gone@clinic.test") == 2)


async def test_with_the_database_stopped_mail_is_accepted_and_waits_for_the_suppression_check(
        cluster_world: ClusterWorld, postgres_server: PostgresServer) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    node = await cluster_world.node("node-a")
    await mailward_ok(config_of(node), "suppress", "add", "blocked@clinic.test")
    postgres_server.stop()
    try:
        for i in range(5):
            await submit(node, f"pat{i}@clinic.test", body=f"while down {i}")
        await submit(node, "blocked@clinic.test", body="suppressed")
        # Nothing is sent without the list's answer; everything waits, deferred.
        await eventually(lambda: len(node.queued(QueueState.DEFERRED)) == 6, timeout=30)
        assert sink.messages == []
    finally:
        postgres_server.start()
    await eventually(lambda: len(sink.messages) == 5, timeout=60)
    assert "blocked@clinic.test" not in sink.rcpt_seen
    await eventually(lambda: not node.queued(QueueState.DEFERRED) and not node.queued(QueueState.ACTIVE),
                     timeout=30)
    # The audit records written meanwhile waited in the node's file and were shipped, in order.
    audit_dir = node.gateway.config.audit.dir
    written = sum(len(path.read_bytes().splitlines()) for path in audit_dir.glob("audit-*.jsonl"))
    await eventually(lambda: shipped_count(cluster_world.database_url) == written, timeout=60)
    verified = await mailward_ok(config_of(node), "audit", "verify")
    assert f"cluster copy of node-a: chain intact: {written} records" in verified


def shipped_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_records WHERE node_id = 'node-a'").fetchone()
    return int(row[0]) if row else 0


async def test_an_api_token_made_on_one_node_works_on_every_node(cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    ports = {node_id: free_port() for node_id in ("node-a", "node-b")}
    nodes = {node_id: await cluster_world.node(node_id, sections={"api": {"listen": f"127.0.0.1:{port}"}})
             for node_id, port in ports.items()}
    made = await mailward_ok(config_of(nodes["node-a"]), "api", "token", "add", "crm",
                             "--scope", "status")
    token = made.split(": ", 1)[1].split()[0]
    listed = await mailward_ok(config_of(nodes["node-b"]), "api", "token", "list")
    assert listed.startswith("crm\tstatus")

    async def status_on_b() -> int:
        async with aiohttp.ClientSession() as client, client.get(
                f"http://127.0.0.1:{ports['node-b']}/api/v1/queue",
                headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status

    async def answered() -> bool:
        return await status_on_b() == 200
    await eventually(answered, timeout=10)  # node B reads the tokens again within seconds

    await mailward_ok(config_of(nodes["node-a"]), "api", "token", "remove", "crm")

    async def refused() -> bool:
        return await status_on_b() == 401
    await eventually(refused, timeout=10)


async def test_a_recipient_suppressed_on_node_a_is_not_sent_by_node_b_that_had_cleared_it(
        cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    node_a = await cluster_world.node("node-a")
    node_b = await cluster_world.node("node-b")
    delivery = node_b.gateway.delivery
    assert delivery is not None
    cache = delivery.suppression.cache  # type: ignore[attr-defined]
    await submit(node_b, "pat@clinic.test", "first")  # the first lookup starts listening for notices
    await eventually(lambda: len(sink.messages) == 1 and cache.generation() is not None)
    await submit(node_b, "pat@clinic.test", "second")
    await eventually(lambda: len(sink.messages) == 2)
    key = ("pat@clinic.test", SENDER.rpartition("@")[2])
    assert cache.known_clear(key)  # answered from memory now

    await mailward_ok(config_of(node_a), "suppress", "add", "pat@clinic.test")
    await eventually(lambda: not cache.known_clear(key))  # the change notice dropped it
    await submit(node_b, "pat@clinic.test", "after")
    await eventually(lambda: len(cluster_world.dsns()) == 1)
    assert len(sink.messages) == 2 and "suppression list" in str(cluster_world.dsns()[0])
