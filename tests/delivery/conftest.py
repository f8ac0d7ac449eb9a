"""A small mail world on loopback for delivery tests: a DNS server on 127.0.0.53, receiving MX
hosts on 127.0.0.x (all on one port, as ``delivery.smtp_port`` is one port), and the gateway.

The sender's own domain, hospital.test, has an MX (127.0.0.19) so that DSNs can be delivered and
read back like any other message.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from gateway.config import Config
from tests.conftest import RunningGateway, free_port
from tests.dnsserver import LoopbackDns, start_dns
from tests.smtpsink import Sink, start_sink

SENDER = "dr@hospital.test"
SENDER_MX = "127.0.0.19"

BASE_RECORDS: dict[tuple[str, str], list[str]] = {
    ("hospital.test", "MX"): ["10 mx.hospital.test."],
    ("mx.hospital.test", "A"): [SENDER_MX],
}


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


class MailWorld:
    def __init__(self, make_config: Callable[..., Config], start_gateway: Callable[[Config], Any],
                 ca: trustme.CA, tmp_path: Path) -> None:
        self._make_config = make_config
        self._start_gateway = start_gateway
        self.ca = ca
        self.tmp_path = tmp_path
        self.port = free_port("127.0.0.11")
        self.servers: list[asyncio.AbstractServer | asyncio.BaseTransport] = []
        self.dns_server: LoopbackDns | None = None
        self.dns_port = 0
        self.sender_sink: Sink | None = None
        self.last_certificate: trustme.LeafCert | None = None
        self.runners: list[web.AppRunner] = []

    async def start_dns(self, records: dict[tuple[str, str], list[str]], **kwargs: Any) -> LoopbackDns:
        self.dns_server, self.dns_port = await start_dns("127.0.0.53", {**BASE_RECORDS, **records}, **kwargs)
        assert self.dns_server.transport is not None
        self.servers.append(self.dns_server.transport)
        self.sender_sink = await self.sink(SENDER_MX)
        return self.dns_server

    async def sink(self, host: str, *, tls_name: str | None = None,
                   certificate: trustme.LeafCert | None = None) -> Sink:
        """A receiving MX; with `tls_name` it offers STARTTLS with a certificate for that name
        from the test CA, or with `certificate` (e.g. one issued by an intermediate CA)."""
        context = None
        if tls_name is not None or certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.last_certificate = certificate or self.ca.issue_cert(str(tls_name))  # DANE pins it
            self.last_certificate.configure_cert(context)
        sink, server = await start_sink(host, self.port, tls_context=context)
        self.servers.append(server)
        return sink

    async def gateway(self, config: dict[str, Any] | None = None, **delivery: Any) -> RunningGateway:
        """The gateway delivering into this world; `config` holds other sections to set."""
        ca_file = self.tmp_path / "mx-ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_file))
        settings = {"paused": False, "nameservers": [f"127.0.0.53:{self.dns_port}"],
                    "smtp_port": self.port, "ca_file": str(ca_file), "retry_schedule": ["1s"],
                    "connect_timeout": "2s", "command_timeout": "3s", "data_timeout": "3s",
                    "connection_idle_time": "30s", **delivery}
        gateway: RunningGateway = await self._start_gateway(
            self._make_config(delivery=settings, **(config or {})))
        return gateway

    async def https(self, host: str, name: str, app: web.Application,
                    port: int | None = None) -> tuple[web.AppRunner, int]:
        """Serve `app` over HTTPS on host:port (a free port by default) with a test-CA certificate
        for `name` (MTA-STS policies, WKD, TLS report collectors). Stopped with the world."""
        port = port or free_port(host)
        runner = web.AppRunner(app)
        await runner.setup()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(name).configure_cert(context)
        await web.TCPSite(runner, host, port, ssl_context=context).start()
        self.runners.append(runner)
        return runner, port

    def dsns(self) -> list[EmailMessage]:
        assert self.sender_sink is not None
        return [parse(m.content) for m in self.sender_sink.messages if m.sender == ""]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A real tmpfs of the given size (e.g. "1m") that a test can fill up; unmounted after."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        directory = tmp_path / f"disk{len(mounts)}"
        directory.mkdir()
        options = f"size={size},mode=0700"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"mounting a tmpfs needs root (as CI runs): {done.stderr.strip()}")
        mounts.append(directory)
        return directory

    yield mount
    for directory in mounts:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until `disk` is full; delete it to free the space again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
    with open(filler, "ab", buffering=0) as handle, contextlib.suppress(OSError):
        while True:  # the last few bytes, so that nothing more fits
            handle.write(b"\0")
    return filler


@pytest.fixture
async def world(make_config: Callable[..., Config], start_gateway: Callable[[Config], Any],
                ca: trustme.CA, tmp_path: Path) -> AsyncIterator[MailWorld]:
    mail_world = MailWorld(make_config, start_gateway, ca, tmp_path)
    yield mail_world
    await mail_world.close()
