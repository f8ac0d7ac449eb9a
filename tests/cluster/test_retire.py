"""Retiring a node: its queued mail is handed to another node with `mailward queue reinject`, for
the recipients still pending only, and leaves its spool only once the other node took it."""

from __future__ import annotations

import json

from gateway.spool import QueueState
from tests.cluster.conftest import RECORDS, ClusterWorld, config_of
from tests.conftest import mailward_cli, send
from tests.delivery.conftest import SENDER
from tests.polling import eventually
from tests.stages.dlp import builders as b


async def test_queued_mail_of_a_retired_node_is_delivered_through_another_node_once(
        cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns(RECORDS)
    sink = await cluster_world.sink("127.0.0.21")
    sink.rcpt_replies["later@clinic.test"] = "451 4.2.0 mailbox busy, try later"
    node_a = await cluster_world.node("node-a")
    node_b = await cluster_world.node("node-b", retry_schedule=["1h"])
    for i in range(3):
        code, _ = await send(node_b.client(), SENDER, ["later@clinic.test"],
                             b.message(f"queued {i}", sender=SENDER, to="later@clinic.test"))
        assert code == 250
    code, _ = await send(node_b.client(), SENDER, ["now@clinic.test", "later@clinic.test"],
                         b.message("half", sender=SENDER, to="now@clinic.test"))
    assert code == 250
    await eventually(lambda: len(node_b.queued(QueueState.DEFERRED)) == 4)
    assert [m.recipients for m in sink.messages] == [["now@clinic.test"]]
    config_b = config_of(node_b)
    await node_b.gateway.drain()  # node B is being retired

    del sink.rcpt_replies["later@clinic.test"]
    host, port = node_a.address()
    code, out = await mailward_cli(config_b, "queue", "reinject", "--all", "--to", f"{host}:{port}", "--json")
    assert code == 0, out
    handed = json.loads(out)
    assert len(handed) == 4 and all(h["ok"] and f"handed to {host}:{port}" in h["result"] for h in handed)
    await eventually(lambda: len(sink.messages) == 5)
    assert sorted(r for m in sink.messages for r in m.recipients) == \
        ["later@clinic.test"] * 4 + ["now@clinic.test"]  # the delivered one was not sent again
    code, out = await mailward_cli(config_b, "queue", "list", "--json")
    assert json.loads(out) == []
