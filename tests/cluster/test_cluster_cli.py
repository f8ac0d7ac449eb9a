"""`mailward cluster init` creates the schema once (a second run changes nothing), `mailward run`
refuses a database it does not know, and `mailward cluster status` lists the live nodes with
their queues and the shared limits."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.state.postgres import SCHEMA_VERSION
from tests.cluster.conftest import NODES, ClusterWorld, config_of
from tests.cluster.servers import PostgresServer
from tests.cluster.test_shared_limits import LIMITED
from tests.conftest import free_port, mailward_cli, mailward_ok
from tests.polling import eventually


async def test_init_creates_the_schema_once_and_run_refuses_an_uninitialised_database(
        cluster_world: ClusterWorld, postgres_server: PostgresServer) -> None:
    cluster_world.database_url = postgres_server.new_database()  # empty
    config = cluster_world.node_config("node-a", nameservers=["127.0.0.1:9"])
    code, out = await mailward_cli(config, "run")
    assert code == 1
    assert f"schema version 0, this Mailward needs {SCHEMA_VERSION}" in out
    assert "mailward cluster init" in out

    first = await mailward_ok(config, "cluster", "init")
    assert f"at schema version {SCHEMA_VERSION} (was 0)" in first
    again = await mailward_ok(config, "cluster", "init")
    assert "(was already)" in again


async def test_status_lists_live_nodes_with_queues_and_the_shared_limits(cluster_world: ClusterWorld) -> None:
    await cluster_world.start_dns({})
    nodes = [await cluster_world.node(node_id, shaping=LIMITED) for node_id in NODES]
    source = config_of(nodes[0])

    # Each node sends its first heartbeat as it starts.
    await eventually(lambda: all(n.gateway.delivery and n.gateway.delivery.limits.live_nodes == 3  # type: ignore[attr-defined]
                                 for n in nodes), timeout=15)
    status = json.loads(await mailward_ok(source, "cluster", "status", "--json"))
    assert sorted(n["node_id"] for n in status["nodes"]) == sorted(NODES)  # type: ignore[union-attr]
    assert all(n["live"] and "deferred" in n["queues"] for n in status["nodes"])  # type: ignore[union-attr]
    assert status["limits"]["clinic"]["max_connections"] == 3  # type: ignore[index]
    assert status["schema"] == {"version": SCHEMA_VERSION, "expected": SCHEMA_VERSION}
    assert status["problems"] == []
    text = await mailward_ok(source, "cluster", "status")
    assert "nodes (3 live)" in text and "clinic" in text


async def test_status_says_when_redis_does_not_answer(cluster_world: ClusterWorld) -> None:
    cluster_world.redis_url = "redis://127.0.0.1:9/0"
    code, out = await mailward_cli(cluster_world.node_config("node-a", nameservers=["127.0.0.1:9"]),
                                   "cluster", "status")
    assert code == 1
    assert "problem: Redis at redis://127.0.0.1:9/0 does not answer" in out


async def test_a_node_without_a_cluster_loads_neither_driver(make_config: Any, tmp_path: Path) -> None:
    """A single node's processes stay as small as before: the Redis and PostgreSQL drivers are
    imported only for `cluster:` (each costs several MB in every process), and the console's
    TOTP and QR code libraries only with `console.listen`."""
    config = make_config(delivery={"paused": False, "nameservers": ["127.0.0.1:9"]},
                         api={"listen": f"127.0.0.1:{free_port()}"},
                         webhooks=[], portal={"enabled": False})
    assert config.source is not None
    script = (
        "import asyncio, sys\n"
        "from gateway.app import Gateway\n"
        "from gateway.config import load_config\n"
        "async def main():\n"
        f"    gateway = Gateway(load_config(__import__('pathlib').Path({str(config.source)!r})))\n"
        "    await gateway.start()\n"
        "    heavy = ('redis', 'psycopg', 'psycopg_pool', 'pyotp', 'segno')\n"
        "    print(sorted(m for m in heavy if m in sys.modules))\n"
        "    await gateway.drain()\n"
        "asyncio.run(main())\n")
    pipe = asyncio.subprocess.PIPE
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=pipe, stderr=pipe)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip().splitlines()[-1] == "[]"
