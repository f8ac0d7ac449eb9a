"""Fixtures that start real peers: a test CA (trustme), gateways on loopback, SMTP clients.

Nothing on the message path is mocked: tests talk SMTP over 127.0.0.x sockets with real TLS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
import yaml

from gateway.app import Gateway
from gateway.config import Config, load_config
from gateway.spool import QueueState, Spool, open_spool
from tests.polling import free_port, port_open, wait_for

HOSTNAME = "mailward.test"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"cert_file": cert_file, "key_file": key_file, "ca_file": ca_file}


def client_context(ca: trustme.CA, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def write_config(directory: Path, overrides: dict[str, Any]) -> Path:
    """A config file in `directory` with test-friendly settings plus `overrides` (merged by section)."""
    settings: dict[str, Any] = {
        "hostname": HOSTNAME,
        "listeners": [{"address": "127.0.0.1", "port": 0, "starttls": "optional",
                       "auth": "optional"}],
        "metrics": {"listen": None},
        "spool": {"dir": "var/spool", "key_file": "var/keys/spool.key"},
        "relay": {"networks": ["127.0.0.1/32"], "users_file": "var/users.yaml"},
        "limits": {"drain_timeout": "3s"},
        # No DLP policy unless a test gives one (a directory that does not exist: no rules); the
        # built-in policy (protect: all) is tested where it is meant.
        "policies_dir": "policies",
        # Delivery only where a test asks for it, and never beyond loopback: port 9 has no DNS.
        "delivery": {"paused": True, "nameservers": ["127.0.0.1:9"]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    path = directory / "mailward.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.fixture
def make_config(tmp_path: Path, tls_files: dict[str, Path]) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        overrides.setdefault("tls", {"cert_file": str(tls_files["cert_file"]),
                                     "key_file": str(tls_files["key_file"]),
                                     "client_ca_file": str(tls_files["ca_file"])})
        return load_config(write_config(tmp_path, overrides))
    return make


class RunningGateway:
    """An in-process gateway (same event loop as the test) and helpers to reach it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def spool(self) -> Spool:
        assert self.gateway.spool is not None
        return self.gateway.spool

    def address(self, index: int = 0) -> tuple[str, int]:
        return self.gateway.addresses[index]

    def client(self, *, source: str | None = None, index: int = 0,
               tls_context: ssl.SSLContext | None = None, timeout: float = 10) -> aiosmtplib.SMTP:
        host, port = self.address(index)
        return aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=timeout,
                               local_hostname="client.test", tls_context=tls_context,
                               source_address=(source, 0) if source else None)

    def queued(self, state: QueueState = QueueState.INCOMING) -> list[str]:
        return self.spool.ids(state)


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[Config], Any]]:
    started: list[Gateway] = []

    async def start(config: Config) -> RunningGateway:
        gateway = Gateway(config)
        await gateway.start()
        started.append(gateway)
        return RunningGateway(gateway)

    yield start
    for gateway in started:
        await gateway.drain()


async def send(client: aiosmtplib.SMTP, sender: str, recipients: list[str], body: bytes,
               *, starttls: ssl.SSLContext | None = None) -> tuple[int, str]:
    """One full transaction; returns the final reply (code, text) or the first refusal."""
    try:
        if not client.is_connected:
            await client.connect()
        if starttls is not None and not client.get_transport_info("sslcontext"):
            await client.starttls(tls_context=starttls)
        await client.mail(sender)
        for rcpt in recipients:
            await client.rcpt(rcpt)
        reply = await client.data(body)
    except aiosmtplib.SMTPResponseException as exc:
        client.close()  # a refused transaction is abandoned, as a real client would
        return exc.code, exc.message
    except aiosmtplib.SMTPRecipientsRefused as exc:
        client.close()
        first = exc.recipients[0]
        return first.code, first.message
    return reply.code, reply.message


def message(marker: str = "MARKER", size: int = 0) -> bytes:
    filler = (b"x" * 76 + b"\r\n") * (size // 78 + 1) if size else b""
    body = f"Patient note {marker}\r\n".encode() + filler
    return (f"From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@example.com>\r\n\r\n").encode() + body + b"\r\n"


async def mailward_cli(config_file: Path, *args: str) -> tuple[int, str]:
    """`mailward -c CONFIG ARGS...` in a subprocess without blocking the event loop (the tests'
    DNS servers and sinks live on it); the exit code and stdout with stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "-c", str(config_file), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def mailward_ok(config_file: Path, *args: str) -> str:
    """As `mailward_cli`, for a command that must succeed: its output."""
    code, out = await mailward_cli(config_file, *args)
    assert code == 0, out
    return out


class GatewayProcess:
    """`mailward run` in a child process, for tests that kill it or send it signals."""

    def __init__(self, config_file: Path, port: int, host: str = "127.0.0.1") -> None:
        self.config_file = config_file
        self.port = port
        self.host = host
        self.log = config_file.parent / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(self.config_file), "run"],
                stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self._listening, timeout=20)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited: {self.log.read_text()}")
        return port_open(self.port, self.host)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def gateway_process(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[Callable[..., GatewayProcess]]:
    made: list[GatewayProcess] = []

    def make(**overrides: Any) -> GatewayProcess:
        port = free_port()
        overrides.setdefault("listeners", [{"address": "127.0.0.1", "port": port}])
        overrides.setdefault("tls", {"cert_file": str(tls_files["cert_file"]),
                                     "key_file": str(tls_files["key_file"])})
        process = GatewayProcess(write_config(tmp_path, overrides), port)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


def open_test_spool(config_file: Path) -> Spool:
    return open_spool(load_config(config_file).spool)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILWARD_CONFIG", raising=False)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
