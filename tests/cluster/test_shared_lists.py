"""The suppression list in PostgreSQL: a hard bounce on one node stops mail to that recipient
from every node, `mailward suppress` on any node sees and changes the same list, and while the
database is away no delivery skips the check (it waits), nothing accepted is lost, and a bounce
seen meanwhile is kept on the node and reaches the shared list once the database is back."""

from __future__ import annotations

import json

from gateway.spool import QueueState
from tests.cluster.conftest import ClusterWorld
from tests.cluster.servers import PostgresServer
from tests.conftest import RunningGateway, mailward_ok, send
from tests.delivery.conftest import SENDER
from tests.polling import eventually
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}


async def submit(node: RunningGateway, to: str, body: str = "note") -> None:
    code, text = await send(node.client(), SENDER, [to], b.message(body, sender=SENDER, to=to))
    assert code == 250, text


def config_file(node: RunningGateway) -> str:
    source = node.gateway.config.source
    assert source is not None
    return str(source)


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
    listed = json.loads(await mailward_ok(node_b.gateway.config.source, "suppress", "list", "--json"))  # type: ignore[arg-type]
    assert [(e["address"], e["reason"]) for e in listed] == [("gone@clinic.test", "bounce")]

    # Removed by hand on node B: node A writes to it again.
    await mailward_ok(node_b.gateway.config.source, "suppress", "remove", "gone@clinic.test")  # type: ignore[arg-type]
    await submit(node_a, "gone@clinic.test")
    await eventually(lambda: sink.rcpt_seen.count("gone@clinic.test") == 2)


async def test_with_the_database_stopped_mail_is_accepted_and_waits_for_the_suppression_check(
        cluster_world: ClusterWorld, postgres_server: PostgresServer) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    node = await cluster_world.node("node-a")
    await mailward_ok(node.gateway.config.source, "suppress", "add", "blocked@clinic.test")  # type: ignore[arg-type]
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
