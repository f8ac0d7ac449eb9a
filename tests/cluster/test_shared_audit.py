"""The audit trail of a cluster: each node ships its hash-chained records into PostgreSQL, so
`mailward audit search` on node C finds what nodes A and B received, `audit verify` checks every
node's chain in the copy (and names a record altered there), and each webhook event is sent once
for the whole cluster, by the node holding the dispatcher lease."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from tests.cluster.conftest import RECORDS, ClusterWorld, config_of
from tests.conftest import RunningGateway, mailward_cli, mailward_ok, send
from tests.delivery.conftest import SENDER
from tests.delivery.test_webhooks import receiving_webhooks
from tests.polling import eventually
from tests.stages.dlp import builders as b


async def submit(node: RunningGateway, to: str, body: str) -> str:
    code, text = await send(node.client(), SENDER, [to], b.message(body, sender=SENDER, to=to))
    assert code == 250, text
    return text.split()[-1]


def shipped(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {str(n): int(c) for n, c in conn.execute(
            "SELECT node_id, count(*) FROM audit_records GROUP BY node_id")}


async def test_node_c_finds_what_a_and_b_received_and_the_copy_verifies(cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    node_a, node_b, node_c = [await cluster_world.node(n) for n in ("node-a", "node-b", "node-c")]
    from_a = await submit(node_a, "pat@clinic.test", "via a")
    from_b = await submit(node_b, "pat@clinic.test", "via b")
    await eventually(lambda: len(sink.messages) == 2)
    # Shipped within a second or so of being written (received, queued, delivered...).
    await eventually(lambda: shipped(cluster_world.database_url).keys() >= {"node-a", "node-b"}
                     and _delivered_shipped(cluster_world.database_url) == 2, timeout=20)

    config_c = config_of(node_c)
    found = [json.loads(line) for line in
             (await mailward_ok(config_c, "audit", "search", "--recipient", "pat@clinic.test")).splitlines()]
    assert {(r["queue_id"], r["node"]) for r in found if r["event"] == "received"} == \
        {(from_a, "node-a"), (from_b, "node-b")}
    assert {r["queue_id"] for r in found if r["event"] == "delivered"} == {from_a, from_b}

    verified = await mailward_ok(config_c, "audit", "verify")
    assert "cluster copy of node-a: chain intact" in verified
    assert "cluster copy of node-b: chain intact" in verified

    # Someone with database access edits a record of node A's: verify names it.
    with psycopg.connect(cluster_world.database_url) as conn:
        conn.execute("UPDATE audit_records SET line = replace(line, 'pat@clinic.test', 'other@clinic.test') "
                     "WHERE node_id = 'node-a' AND event = 'delivered'")
    code, out = await mailward_cli(config_c, "audit", "verify")
    assert code == 1
    assert "cluster copy of node-a: node-a:" in out and "the record was altered" in out
    assert "cluster copy of node-b: chain intact" in out


def _delivered_shipped(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_records WHERE event = 'delivered'").fetchone()
    return int(row[0]) if row else 0


async def test_each_webhook_event_is_sent_once_for_the_cluster(cluster_world: ClusterWorld,
                                                               tmp_path: Path) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    receiver, _, hook = await receiving_webhooks(tmp_path, ["delivered"], "crm")
    hooks = {"webhooks": [hook], "audit": {"enabled": True}}
    nodes = [await cluster_world.node(n, sections=hooks) for n in ("node-a", "node-b", "node-c")]
    for i, node in enumerate(nodes * 2):
        await submit(node, "pat@clinic.test", f"note {i}")
    await eventually(lambda: len(sink.messages) == 6)
    await eventually(lambda: len(receiver.events) >= 6, timeout=30)
    assert len(receiver.ids) == len(set(receiver.ids)) == 6  # once each, not once per node
    assert sorted(e["data"]["node"] for e in receiver.events) == \
        ["node-a", "node-a", "node-b", "node-b", "node-c", "node-c"]
    await receiver.stop()


async def test_a_rebuilt_node_with_the_same_id_does_not_mix_its_new_chain_into_the_copy(
        cluster_world: ClusterWorld, caplog: pytest.LogCaptureFixture) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    node = await cluster_world.node("node-a")
    await submit(node, "pat@clinic.test", "first life")
    await eventually(lambda: len(sink.messages) == 1)
    await eventually(lambda: _delivered_shipped(cluster_world.database_url) == 1, timeout=20)
    before = shipped(cluster_world.database_url)["node-a"]
    await node.gateway.drain()
    shutil.rmtree(node.gateway.config.audit.dir)  # the node is rebuilt: a new, empty audit log

    node = await cluster_world.node("node-a")
    await submit(node, "pat@clinic.test", "second life")
    await eventually(lambda: len(sink.messages) == 2)
    await eventually(lambda: "event=audit_copy_conflict" in caplog.text, timeout=20)
    assert shipped(cluster_world.database_url)["node-a"] == before  # the old chain stays whole
    verified = await mailward_ok(config_of(node), "audit", "verify")
    assert f"cluster copy of node-a: chain intact: {before} records" in verified
