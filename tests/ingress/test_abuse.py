"""Abuse from outside, over the real protocol: AUTH guessing spread over many connections and
addresses, and idle connections that try to take every slot from the relaying host."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from gateway.config import Config
from gateway.ingress.users import UserStore
from tests.conftest import client_context
from tests.ingress.test_limits import read_reply

PASSWORD = "correct horse battery staple"
FAIL2BAN = Path(__file__).resolve().parents[2] / "ops" / "fail2ban" / "mailward.conf"


@pytest.fixture
def auth_config(make_config: Callable[..., Config]) -> Config:
    config = make_config(relay={"networks": ["127.0.0.1/32"]},
                         limits={"auth_failures_per_ip": 4, "auth_failures_per_user": 6})
    UserStore(config.relay.users_file).add("alice@example.com", PASSWORD)
    UserStore(config.relay.users_file).add("bob@example.com", PASSWORD)
    return config


async def try_auth(gw: Any, ca: trustme.CA, source: str, user: str, password: str) -> int:
    """One AUTH PLAIN on a new connection from `source`; the reply code."""
    client = gw.client(source=source)
    await client.connect()
    await client.starttls(tls_context=client_context(ca))
    await client.ehlo()
    try:
        return (await client.auth_plain(user, password)).code
    except aiosmtplib.SMTPAuthenticationError as refused:
        return refused.code
    finally:
        client.close()


async def test_guesses_over_many_connections_lock_the_address_out(
        auth_config: Config, start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(auth_config)
    codes = await asyncio.gather(*(try_auth(gw, ca, "127.0.0.50", "alice@example.com", f"guess {n}")
                                   for n in range(8)))  # 8 connections at once
    assert codes.count(535) <= 4 and codes.count(454) >= 4
    # Locked: even the right password is refused unchecked from that address...
    assert await try_auth(gw, ca, "127.0.0.50", "bob@example.com", PASSWORD) == 454
    # ...while another address still signs in.
    assert await try_auth(gw, ca, "127.0.0.51", "bob@example.com", PASSWORD) == 235


async def test_guesses_for_one_user_from_many_addresses_lock_the_user_out(
        auth_config: Config, start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(auth_config)
    for n in range(6):  # one guess from each of six addresses: no address reaches its limit
        assert await try_auth(gw, ca, f"127.0.0.{60 + n}", "alice@example.com", "wrong") == 535
    assert await try_auth(gw, ca, "127.0.0.70", "alice@example.com", PASSWORD) == 454
    assert await try_auth(gw, ca, "127.0.0.70", "bob@example.com", PASSWORD) == 235


async def test_each_failure_is_logged_for_fail2ban_and_audited(
        auth_config: Config, start_gateway: Any, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(auth_config)
    assert await try_auth(gw, ca, "127.0.0.80", "alice@example.com", "wrong password") == 535
    failregex = re.search(r"^failregex = (.*)$", FAIL2BAN.read_text(), re.M)
    assert failregex is not None
    pattern = re.compile(failregex.group(1).replace("<HOST>", r"(?P<host>[0-9.]+)"))
    lines = [f"2026-11-30 20:00:00,000 WARNING {r.name}[1] {r.getMessage()}" for r in caplog.records]
    hosts = [m.group("host") for m in map(pattern.match, lines) if m]
    assert hosts == ["127.0.0.80"]
    assert "wrong password" not in caplog.text
    directory = gw.gateway.audit.directory
    records = [json.loads(line) for path in directory.glob("audit-*.jsonl")
               for line in path.read_text().splitlines()]
    assert [(r["client"], r["user"]) for r in records if r["event"] == "auth_failed"] == \
        [("127.0.0.80", "alice@example.com")]


async def idle(gw: Any, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection that says nothing after the greeting; None if it was refused."""
    reader, writer = await asyncio.open_connection(*gw.address(), local_addr=(source, 0))
    greeting = await read_reply(reader)
    if greeting.startswith(b"421"):
        writer.close()
        return None
    return reader, writer


async def test_idle_connections_from_outside_cannot_take_the_relays_slots(
        make_config: Callable[..., Config], start_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(make_config(relay={"networks": ["127.0.0.5/32"]},
                                         limits={"max_connections": 40, "reserved_connections": 10,
                                                 "max_connections_per_ip": 10}))
    held = []
    for n in range(5):  # 5 attacking addresses, each as many connections as it may get
        for _ in range(12):
            opened = await idle(gw, f"127.0.0.{60 + n}")
            if opened is not None:
                held.append(opened)
    assert len(held) == 30  # 40 slots, 10 reserved: the attackers got 30 and no more
    assert "holders=127.0.0.6" in caplog.text  # the refusal says who holds the slots
    relay = [await idle(gw, "127.0.0.5") for _ in range(10)]
    assert all(connection is not None for connection in relay)  # the relay gets in
    for _, writer in [*held, *(c for c in relay if c is not None)]:
        writer.close()


async def test_a_client_from_outside_that_sends_nothing_is_closed_early(
        make_config: Callable[..., Config], start_gateway: Any) -> None:
    gw = await start_gateway(make_config(relay={"networks": ["127.0.0.5/32"]},
                                         limits={"idle_before_mail": "1s", "command_timeout": "5m"}))
    outsider = await idle(gw, "127.0.0.90")
    relay = await idle(gw, "127.0.0.5")
    assert outsider is not None and relay is not None
    closing = await asyncio.wait_for(read_reply(outsider[0]), 10)
    assert closing.startswith(b"421")  # timed out long before the 5 minute command timeout
    relay[1].write(b"NOOP\r\n")
    assert (await read_reply(relay[0])).startswith(b"250")  # the relay's session is still open
    outsider[1].close()
    relay[1].close()
