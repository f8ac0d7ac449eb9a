"""A cluster on loopback: real redis-server and PostgreSQL (from the Debian packages), three
gateway nodes on 127.0.0.101-.103 sharing them, and the delivery tests' mail world (DNS, MX
sinks that record every connection)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.config import Config, load_config
from gateway.state.postgres import Database
from tests.cluster.servers import PostgresServer, RedisServer
from tests.conftest import RunningGateway, write_config
from tests.delivery.conftest import MailWorld

NODES = {"node-a": "127.0.0.101", "node-b": "127.0.0.102", "node-c": "127.0.0.103"}
RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
EGRESS = {"node-a": "127.0.0.111", "node-b": "127.0.0.112", "node-c": "127.0.0.113"}  # each its own IP


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.init()
    server.start()
    yield server
    try:
        server.stop("immediate")
    finally:
        server.remove()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, initialised database for one test."""
    url = postgres_server.new_database()
    database = Database(url)
    try:
        database.migrate()
    finally:
        database.close()
    return url


def config_of(node: RunningGateway) -> Path:
    """The config file a node was started with (for `mailward -c` on that node)."""
    source = node.gateway.config.source
    assert source is not None
    return source


class ClusterWorld(MailWorld):
    """The mail world, with nodes that share `redis_url` and `database_url`."""

    def __init__(self, start_gateway: Callable[[Config], Any], ca: trustme.CA, tmp_path: Path,
                 tls_files: dict[str, Path], redis_url: str, database_url: str) -> None:
        super().__init__(lambda **_: None, start_gateway, ca, tmp_path)  # type: ignore[arg-type,return-value]
        self.tls_files = tls_files
        self.redis_url = redis_url
        self.database_url = database_url
        self.nodes: dict[str, RunningGateway] = {}

    def node_config(self, node_id: str, *, cluster: bool = True, sections: dict[str, Any] | None = None,
                    **delivery: Any) -> Path:
        """Write the config of `node_id` (in a directory of its own) and return its path."""
        ca_file = self.tmp_path / "mx-ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_file))
        settings = {"paused": False, "nameservers": [f"127.0.0.53:{self.dns_port}"],
                    "smtp_port": self.port, "ca_file": str(ca_file), "retry_schedule": ["1s"],
                    "connect_timeout": "2s", "command_timeout": "3s", "data_timeout": "3s",
                    "connection_idle_time": "30s",
                    "pools": {"own": {"ips": [{"address": EGRESS[node_id],
                                               "ehlo": f"{node_id}.mailward.test"}]}},
                    **delivery}
        overrides: dict[str, Any] = {
            "tls": {"cert_file": str(self.tls_files["cert_file"]),
                    "key_file": str(self.tls_files["key_file"])},
            "listeners": [{"address": NODES[node_id], "port": 0, "starttls": "optional"}],
            "relay": {"networks": ["127.0.0.0/8"], "users_file": "var/users.yaml"},
            "delivery": settings, **(sections or {}),
            # One audit key for the cluster, so every node's chain verifies anywhere.
            "audit": {"key_file": str(self.tmp_path / "audit.key"), **(sections or {}).get("audit", {})}}
        if cluster:
            overrides["cluster"] = {"node_id": node_id, "redis": self.redis_url,
                                    "postgres": self.database_url}
        directory = self.tmp_path / node_id
        directory.mkdir(exist_ok=True)
        return write_config(directory, overrides)

    async def node(self, node_id: str, *, cluster: bool = True, sections: dict[str, Any] | None = None,
                   **delivery: Any) -> RunningGateway:
        """Start node `node_id` in this process (its own spool, audit log and keys)."""
        config = load_config(self.node_config(node_id, cluster=cluster, sections=sections, **delivery))
        gateway: RunningGateway = await self._start_gateway(config)
        self.nodes[node_id] = gateway
        return gateway


@pytest.fixture
async def cluster_world(start_gateway: Callable[[Config], Any], ca: trustme.CA, tmp_path: Path,
                        tls_files: dict[str, Path], redis_server: RedisServer,
                        database_url: str) -> AsyncIterator[ClusterWorld]:
    world = ClusterWorld(start_gateway, ca, tmp_path, tls_files, redis_server.url, database_url)
    yield world
    await world.close()
