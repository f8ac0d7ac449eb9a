"""Real Redis, PostgreSQL and HAProxy servers for cluster tests, from the Debian packages, each in
a temporary directory on loopback, started and stopped (or killed) by the test itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.polling import free_port, port_open, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), timeout=10)

    def kill(self) -> None:
        """kill -9: no goodbye to its clients, and its memory (every count) is gone."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


def _pg_binary(name: str) -> str:
    found = PG_BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, run by the `postgres` user when the tests
    run as root (PostgreSQL refuses to run as root; pytest's own temporary directories are
    closed to other users, hence a directory of its own under /tmp)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mailward-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self._databases = 0

    def _run(self, *args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True, user=self.user, cwd=self.directory,
                              check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {done.stdout}{done.stderr}")

    def init(self) -> None:
        if self.user is not None:
            shutil.chown(self.directory, self.user, self.user)
        self._run(_pg_binary("initdb"), "-D", str(self.data), "-U", "mailward", "--auth=trust",
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"), "-w",
                  "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database for one test; its URL."""
        self._databases += 1
        name = f"mailward_{self._databases}"
        admin = f"postgresql://mailward@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]  # a name we made
        return f"postgresql://mailward@127.0.0.1:{self.port}/{name}"


class HaProxy:
    """HAProxy in TCP mode on `address`, round robin over `backends`, each told the real client
    with the PROXY protocol (v2), as docs/cluster.md sets it up."""

    def __init__(self, directory: Path, address: str, backends: list[tuple[str, int]]) -> None:
        self.directory = directory
        self.address = address
        self.port = free_port(address)
        self.backends = backends
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"    server n{i} {host}:{port} send-proxy-v2 check inter 500 fall 1 rise 1"
                            for i, (host, port) in enumerate(self.backends))
        config = self.directory / "haproxy.cfg"
        config.write_text(f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind {self.address}:{self.port}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
""")
        with open(self.directory / "haproxy.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                                         stderr=log)
        wait_for(lambda: port_open(self.port, self.address), timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
