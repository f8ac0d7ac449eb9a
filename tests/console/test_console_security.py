"""The console's defences: wrong TOTP codes lock the user like wrong passwords, a code works
once, a form without its CSRF token is refused, the session cookie is HttpOnly and
SameSite=Strict, pages carry a strict CSP and no-store, a held message's subject, sender name,
attachment name and HTML cannot run script in the reviewer's page, and the console will not
listen in plain HTTP off loopback."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.spool import QueueState
from tests.conftest import send
from tests.console.conftest import Console, browser, csrf_of
from tests.delivery.conftest import SENDER
from tests.stages.dlp import builders as b


async def test_wrong_codes_lock_the_user_and_a_code_works_once(console: Console) -> None:
    await console.add_user("rev", "reviewer")
    async with browser() as client:
        assert (await console.sign_in(client, "rev")).url.path == "/held"  # enrolled
    secret = console.secrets["rev"]
    async with browser() as client:  # the same code again: refused (replayed)
        replay = await console.sign_in(client, "rev", code=pyotp.TOTP(secret).now())
        assert "That code is not right" in await replay.text()
    for _ in range(4):
        async with browser() as client:
            await console.sign_in(client, "rev", code="000000")
    async with browser() as client:  # five wrong codes in a row: locked, even with the right ones
        locked = await console.sign_in(client, "rev", code=pyotp.TOTP(secret).now())
        assert locked.url.path == "/login" and locked.status == 401


async def test_forms_without_their_csrf_token_are_refused(console: Console) -> None:
    await console.add_user("rev", "reviewer")
    queue_id = await console.hold()
    async with browser() as client:
        await client.get(f"{console.base}/login")
        no_token = await client.post(f"{console.base}/login", data={"name": "rev", "password": "x" * 20})
        assert no_token.status == 403
        await console.sign_in(client, "rev")
        for data in ({"queue_id": queue_id, "action": "delete", "reason": "r"},
                     {"csrf": "forged", "queue_id": queue_id, "action": "delete", "reason": "r"}):
            assert (await client.post(f"{console.base}/held", data=data)).status == 403
    assert console.gateway.queued(QueueState.HOLD) == [queue_id]


async def test_session_cookie_flags_and_page_headers(console: Console) -> None:
    await console.add_user("rev", "reviewer")
    async with browser() as client:
        page = await client.get(f"{console.base}/login")
        response = await client.post(f"{console.base}/login", allow_redirects=False, data={
            "csrf": csrf_of(await page.text()), "name": "rev", "password": "correct horse battery staple"})
        cookie = response.cookies["mw_console"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Frame-Options"] == "DENY"
        # Another browser without the cookie gets nothing of that session.
        async with browser() as stranger:
            assert (await stranger.get(f"{console.base}/held", allow_redirects=False)).status == 303


async def test_script_in_a_held_message_never_runs_in_the_reviewers_page(console: Console) -> None:
    await console.add_user("rev", "reviewer")
    evil = "<script>alert(1)</script>"
    content = b.message(f"SSN 219-45-6789 {evil}", subject=f"Hi {evil}", to="dr@clinic.test",
                        sender=f'"<img src=x onerror=alert(4)>" <{SENDER}>',
                        html=f"<p>SSN 219-45-6789</p><img src=x onerror=alert(2)>{evil}",
                        attachments=[('x"><script>alert(3)</script>.pdf', b"%PDF-1.4", "application/pdf")])
    code, text = await send(console.gateway.client(), SENDER, ["dr@clinic.test"], content)
    assert code == 250, text
    queue_id = text.split()[-1]
    async with browser() as client:
        await console.sign_in(client, "rev")
        page = await (await client.get(f"{console.base}/held/{queue_id}")).text()
        assert "<script>alert" not in page and "<img src=x" not in page  # all of it escaped
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=alert(4)&gt;" in page
        frame = await client.get(f"{console.base}/held/{queue_id}/body", headers={"Sec-Fetch-Dest": "iframe"})
        assert frame.headers["Content-Security-Policy"].startswith("sandbox;")
        assert "<script>" not in await frame.text()
        alone = await client.get(f"{console.base}/held/{queue_id}/body")
        assert alone.status == 403  # the sender's HTML is never a page of our origin


def test_the_console_does_not_listen_in_plain_http_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("console: {listen: 0.0.0.0:8443}\n", file="c.yaml", base_dir=tmp_path)
    assert "console.listen" in str(info.value) and "HTTPS" in str(info.value)


async def test_only_an_admin_manages_users_and_a_removed_user_is_signed_out(console: Console) -> None:
    await console.add_user("boss", "admin")
    await console.add_user("rev", "reviewer")
    async with browser() as admin, browser() as reviewer:
        page = await (await console.sign_in(admin, "boss")).text()
        assert 'href="/users"' in page
        await console.sign_in(reviewer, "rev")
        assert (await reviewer.get(f"{console.base}/users")).status == 403
        users = await (await admin.get(f"{console.base}/users")).text()
        added = await admin.post(f"{console.base}/users", data={
            "csrf": csrf_of(users), "action": "add", "name": "aud", "role": "viewer",
            "password": "another long passphrase"})
        assert "aud added as viewer" in await added.text()
        removed = await admin.post(f"{console.base}/users", data={"csrf": csrf_of(users), "action": "remove",
                                                                  "name": "rev"})
        assert "rev removed" in await removed.text()
        # The reviewer's session ends with the user.
        assert (await reviewer.get(f"{console.base}/held", allow_redirects=False)).status == 303
