"""The portal web app over real HTTP on loopback: the link alone shows nothing, the passcode
opens the message, wrong codes lock, attachments download byte-identical, replies are handed to
delivery, revoked and expired messages show a clear page, and the security headers are there."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import PortalConfig
from gateway.portal.store import PortalMessage, PortalStore, open_store
from gateway.portal.web import PortalApp
from tests.stages.dlp import builders as b

PDF = b.pdf(["Glucose 5.4 mmol/L"])
CONTENT = b.message("Your results are attached. SSN 219-45-6789", subject="Lab results for Jane Roe",
                    sender="dr@clinic.example", to="pat@example.org",
                    attachments=[("labs.pdf", PDF, "application/pdf")])


@dataclass
class Outbox:
    codes: list[tuple[str, str]] = field(default_factory=list)
    replies: list[tuple[str, str]] = field(default_factory=list)

    async def code(self, record: PortalMessage, code: str) -> None:
        self.codes.append((record.recipient, code))

    async def reply(self, record: PortalMessage, original: EmailMessage, text: str) -> None:
        self.replies.append((record.sender, text))


@dataclass
class Portal:
    client: TestClient
    store: PortalStore
    outbox: Outbox
    token: str
    message_id: str


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[Portal]:
    store = open_store(tmp_path / "portal", tmp_path / "portal.key", create_key=True)
    token, record = store.store(CONTENT, recipient="pat@example.org", sender="dr@clinic.example", ttl=3600)
    outbox = Outbox()
    app = PortalApp(store, PortalConfig(), send_code=outbox.code, send_reply=outbox.reply).application()
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield Portal(client, store, outbox, token, record.message_id)
    await client.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


async def request_code(portal: Portal) -> str:
    page = await (await portal.client.get(f"/m/{portal.token}")).text()
    response = await portal.client.post(f"/m/{portal.token}/code", data={"csrf": csrf_of(page)})
    assert response.status == 200
    return await response.text()


async def open_message(portal: Portal) -> str:
    page = await request_code(portal)
    [(_, code)] = portal.outbox.codes[-1:]
    response = await portal.client.post(f"/m/{portal.token}/verify",
                                        data={"csrf": csrf_of(page), "code": code})
    assert response.status == 200 and response.url.path.endswith("/read")
    return await response.text()


async def test_the_link_alone_shows_nothing_of_the_message(portal: Portal) -> None:
    response = await portal.client.get(f"/m/{portal.token}")
    page = await response.text()
    assert response.status == 200 and "p**@example.org" in page  # masked
    assert "219-45-6789" not in page and "Lab results" not in page
    assert (await portal.client.get(f"/m/{portal.token}/read")).url.path == f"/m/{portal.token}"


async def test_the_passcode_opens_the_message_and_the_attachment_downloads_identical(portal: Portal) -> None:
    page = await open_message(portal)
    assert portal.outbox.codes[0][0] == "pat@example.org"
    assert "Lab results for Jane Roe" in page and "219-45-6789" in page
    download = await portal.client.get(f"/m/{portal.token}/attachment/0")
    assert download.status == 200 and await download.read() == PDF
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert "attachment;" in download.headers["Content-Disposition"]


async def test_five_wrong_passcodes_lock_the_message(portal: Portal) -> None:
    page = await request_code(portal)
    [(_, code)] = portal.outbox.codes
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        response = await portal.client.post(f"/m/{portal.token}/verify",
                                            data={"csrf": csrf_of(page), "code": wrong})
        page = await response.text()
    assert "locked" in page
    response = await portal.client.post(f"/m/{portal.token}/verify",
                                        data={"csrf": csrf_of(page), "code": code})
    assert "locked" in await response.text() and not response.url.path.endswith("/read")


async def test_reply_is_handed_to_delivery(portal: Portal) -> None:
    page = await open_message(portal)
    response = await portal.client.post(f"/m/{portal.token}/reply",
                                        data={"csrf": csrf_of(page), "text": "Thank you, doctor."})
    assert "Your reply was sent" in await response.text()
    assert portal.outbox.replies == [("dr@clinic.example", "Thank you, doctor.")]


async def test_revoked_and_unknown_links_show_a_clear_page(portal: Portal) -> None:
    portal.store.remove(portal.message_id, "revoked")
    response = await portal.client.get(f"/m/{portal.token}")
    assert response.status == 410 and "withdrawn" in await response.text()
    unknown = await portal.client.get("/m/" + "x" * 32)
    assert unknown.status == 404


async def test_forms_without_the_csrf_token_are_refused(portal: Portal) -> None:
    response = await portal.client.post(f"/m/{portal.token}/code", data={"csrf": "forged"})
    assert response.status == 403 and portal.outbox.codes == []


async def test_security_headers(portal: Portal) -> None:
    response = await portal.client.get(f"/m/{portal.token}")
    headers = response.headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"
    cookie = response.cookies["mw_csrf"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_a_password_set_after_a_passcode_opens_later_messages(portal: Portal) -> None:
    page = await open_message(portal)
    response = await portal.client.post(f"/m/{portal.token}/set-password",
                                        data={"csrf": csrf_of(page), "password": "correct horse battery"})
    assert "Your password is set" in await response.text()
    stored = (portal.store.records.directory / "passwords.json").read_text()
    assert "pat@example.org" not in stored and "correct horse" not in stored
    token, _ = portal.store.store(CONTENT, recipient="pat@example.org", sender="dr@clinic.example", ttl=3600)
    start = await (await portal.client.get(f"/m/{token}")).text()
    assert "Open with password" in start
    opened = await portal.client.post(f"/m/{token}/password",
                                      data={"csrf": csrf_of(start), "password": "correct horse battery"})
    assert opened.url.path.endswith("/read") and "Lab results for Jane Roe" in await opened.text()
    assert len(portal.outbox.codes) == 1  # no second passcode mail was needed


async def test_short_passwords_are_refused_and_wrong_ones_lock(portal: Portal) -> None:
    page = await open_message(portal)
    short = await portal.client.post(f"/m/{portal.token}/set-password",
                                     data={"csrf": csrf_of(page), "password": "short"})
    assert "at least 12 characters" in await short.text()
    await portal.client.post(f"/m/{portal.token}/set-password",
                             data={"csrf": csrf_of(page), "password": "correct horse battery"})
    token, _ = portal.store.store(CONTENT, recipient="pat@example.org", sender="dr@clinic.example", ttl=3600)
    start = await (await portal.client.get(f"/m/{token}")).text()
    for _ in range(5):
        response = await portal.client.post(f"/m/{token}/password",
                                            data={"csrf": csrf_of(start), "password": "wrong password!!"})
        start = await response.text()
    assert "locked" in start and "Open with password" not in start
    again = await portal.client.post(f"/m/{token}/password",
                                     data={"csrf": csrf_of(start), "password": "correct horse battery"})
    assert not again.url.path.endswith("/read")
