"""SMTP AUTH: only after STARTTLS, argon2-verified users, users file changes picked up live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from gateway.config import Config
from gateway.ingress.users import UserStore
from tests.conftest import client_context, message, send

PASSWORD = "correct horse battery staple"


async def outsider_over_tls(gw: Any, ca: trustme.CA) -> aiosmtplib.SMTP:
    """A client outside relay.networks, connected and past STARTTLS and EHLO."""
    client = gw.client(source="127.0.0.99")
    await client.connect()
    await client.starttls(tls_context=client_context(ca))
    await client.ehlo()
    return client


@pytest.fixture
def outside_config(make_config: Callable[..., Config]) -> Config:
    config = make_config(relay={"networks": ["127.0.0.1/32"]})
    UserStore(config.relay.users_file).add("scanner@example.com", PASSWORD)
    return config


async def test_auth_is_refused_before_starttls(outside_config: Config, start_gateway: Any) -> None:
    gw = await start_gateway(outside_config)
    client = gw.client(source="127.0.0.99")
    await client.connect()
    await client.ehlo()
    assert "auth" not in client.esmtp_extensions
    reply = await client.execute_command(b"AUTH", b"PLAIN", b"AHNjYW5uZXIAeA==")
    assert (reply.code, reply.message) == (538, "5.7.11 Encryption required for requested "
                                                "authentication mechanism")
    await client.quit()


async def test_auth_plain_after_starttls_allows_relay_from_outside(
        outside_config: Config, start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(outside_config)
    client = await outsider_over_tls(gw, ca)
    assert client.supports_extension("auth")
    reply = await client.auth_plain("scanner@example.com", PASSWORD)
    assert reply.code == 235
    code, text = await send(client, "scanner@example.com", ["p@example.org"], message("AU1"))
    assert code == 250
    stored = gw.spool.load(text.rsplit(" ", 1)[1])
    assert (stored.client.auth_user, stored.client.relay_reason) == ("scanner@example.com", "auth")
    assert b"scanner" not in gw.spool.content(stored.queue_id).split(b"\r\nFrom:")[0]


async def test_auth_login_with_wrong_password_is_refused_and_relay_stays_closed(
        outside_config: Config, start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(outside_config)
    client = await outsider_over_tls(gw, ca)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await client.auth_login("scanner@example.com", "wrong password entirely")
    assert info.value.code == 535
    code, _ = await send(client, "scanner@example.com", ["p@example.org"], message())
    assert code == 554
    assert gw.queued() == []


async def test_auth_login_succeeds(outside_config: Config, start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(outside_config)
    client = await outsider_over_tls(gw, ca)
    assert (await client.auth_login("scanner@example.com", PASSWORD)).code == 235
    await client.quit()


async def test_user_added_while_running_can_authenticate(
        outside_config: Config, start_gateway: Any, ca: trustme.CA) -> None:
    gw = await start_gateway(outside_config)
    UserStore(outside_config.relay.users_file).add("late@example.com", "another long password")
    client = await outsider_over_tls(gw, ca)
    assert (await client.auth_plain("late@example.com", "another long password")).code == 235
    await client.quit()


async def test_auth_required_listener_refuses_mail_without_auth(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    config = make_config(listeners=[{"address": "127.0.0.1", "port": 0, "starttls": "required",
                                     "auth": "required"}])
    gw = await start_gateway(config)
    code, text = await send(gw.client(), "a@example.com", ["p@example.org"], message(),
                            starttls=client_context(ca))
    assert (code, text) == (530, "5.7.0 Authentication required")


async def test_auth_off_listener_does_not_offer_auth(
        make_config: Callable[..., Config], start_gateway: Any, ca: trustme.CA) -> None:
    config = make_config(listeners=[{"address": "127.0.0.1", "port": 0, "auth": "off"}])
    gw = await start_gateway(config)
    client = gw.client()
    await client.connect()
    await client.starttls(tls_context=client_context(ca))
    await client.ehlo()
    assert not client.supports_extension("auth")
    reply = await client.execute_command(b"AUTH", b"PLAIN", b"AGEAYg==")
    assert reply.code == 503
    await client.quit()


def test_users_file_is_private_and_holds_only_hashes(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.yaml")
    store.add("a@example.com", PASSWORD)
    text = (tmp_path / "users.yaml").read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert (tmp_path / "users.yaml").stat().st_mode & 0o777 == 0o600
    assert store.verify("a@example.com", PASSWORD)
    assert not store.verify("a@example.com", PASSWORD + "x")
    assert not store.verify("nobody@example.com", PASSWORD)
