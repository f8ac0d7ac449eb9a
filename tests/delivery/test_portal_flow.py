"""The portal end to end, over real SMTP and HTTP: a recipient with neither TLS nor keys gets a
notification (link, no PHI), the message is sealed on disk, the passcode mail arrives, the passcode
opens the message, the attachment downloads byte-identical, and the reply reaches the original
sender over verified TLS."""

from __future__ import annotations

import email
import email.policy
import json
import re
import ssl
from pathlib import Path

import aiohttp

from gateway import metrics
from gateway.spool import QueueState
from tests.conftest import send
from tests.delivery.conftest import MailWorld
from tests.delivery.portal_world import DOCTOR, MARKER, PATIENT, PDF, start_portal_world
from tests.polling import eventually
from tests.stages.dlp import builders as b


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


async def test_portal_delivery_notification_passcode_read_download_and_reply(
        world: MailWorld, tmp_path: Path) -> None:
    portal_world = await start_portal_world(world, tmp_path)
    gateway, clinic, patient, base = (portal_world.gateway, portal_world.clinic, portal_world.patient,
                                      portal_world.base)
    viewed = {"event": "viewed"}
    viewed_before = metrics.REGISTRY.get_sample_value("mailward_portal_events_total", viewed) or 0
    original = b.message(f"Your results, SSN {MARKER}", subject="Lab results for Jane Roe", sender=DOCTOR,
                         to=PATIENT, attachments=[("labs.pdf", PDF, "application/pdf")])
    assert (await send(gateway.client(), DOCTOR, [PATIENT], original))[0] == 250

    [notice] = await eventually(lambda: patient.messages)
    parsed = email.message_from_bytes(notice.content, policy=email.policy.default)
    assert parsed["Subject"] == "Secure message from Example Clinic"
    assert MARKER.encode() not in notice.content and b"Jane Roe" not in notice.content
    link = re.search(rf"{re.escape(base)}/m/[A-Za-z0-9_-]+", parsed.get_body(("plain",)).get_content())
    assert link is not None
    for path in (tmp_path / "portal").iterdir():
        assert MARKER.encode() not in path.read_bytes()
    await eventually(lambda: not gateway.queued(QueueState.DEFERRED) and not gateway.queued())

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # an IP host
        page = await (await browser.get(link.group(0))).text()
        assert MARKER not in page
        await browser.post(f"{link.group(0)}/code", data={"csrf": csrf_of(page)})
        code_mail = await eventually(lambda: next(
            (m for m in patient.messages if b"Subject: Your passcode" in m.content), None))
        code = re.search(rb"passcode is (\d{6})", code_mail.content)
        assert code is not None
        response = await browser.post(f"{link.group(0)}/verify",
                                      data={"csrf": csrf_of(page), "code": code.group(1).decode()})
        reading = await response.text()
        assert response.url.path.endswith("/read") and MARKER in reading
        assert "Lab results for Jane Roe" in reading
        download = await browser.get(f"{link.group(0)}/attachment/0")
        assert await download.read() == PDF
        await browser.post(f"{link.group(0)}/reply", data={"csrf": csrf_of(reading), "text": "Thank you!"})

    assert metrics.REGISTRY.get_sample_value("mailward_portal_events_total", viewed) == viewed_before + 1
    [reply] = await eventually(lambda: clinic.messages)
    assert reply.recipients == [DOCTOR] and reply.tls_version is not None
    reply_message = email.message_from_bytes(reply.content, policy=email.policy.default)
    assert reply_message["Subject"] == "Re: Lab results for Jane Roe"
    assert "Thank you!" in reply_message.get_content()

    # Each step is in the audit trail, tied to the queue id and portal id, without content.
    directory = gateway.gateway.audit.directory
    assert directory is not None
    records = [json.loads(line) for path in sorted(directory.glob("audit-*.jsonl"))
               for line in path.read_text().splitlines()]
    portal_events = [r for r in records if r["event"].startswith("portal_")]
    assert [r["event"] for r in portal_events] == ["portal_stored", "portal_code_sent", "portal_viewed",
                                                   "portal_downloaded", "portal_replied"]
    assert {r["portal_id"] for r in portal_events} == {portal_events[0]["portal_id"]}
    assert all(r["recipient"] == PATIENT and r["queue_id"] for r in portal_events)
    assert not any(MARKER.encode() in path.read_bytes() or b"Jane Roe" in path.read_bytes()
                   for path in directory.iterdir())


async def test_portal_serves_https_with_its_own_certificate(world: MailWorld, tmp_path: Path,
                                                           tls_files: dict[str, Path]) -> None:
    portal = await start_portal_world(world, tmp_path, scheme="https",
                                      tls_cert_file=str(tls_files["cert_file"]),
                                      tls_key_file=str(tls_files["key_file"]))
    link = await portal.send_results()
    context = ssl.create_default_context(cafile=str(tls_files["ca_file"]))
    async with aiohttp.ClientSession() as browser, browser.get(link, ssl=context) as response:
        assert response.status == 200
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "mw_csrf" in response.cookies and response.cookies["mw_csrf"]["secure"]


async def test_a_notification_that_cannot_be_delivered_fails_the_recipient_and_tells_the_sender(
        world: MailWorld, tmp_path: Path) -> None:
    portal_world = await start_portal_world(world, tmp_path)
    portal_world.patient.rcpt_replies[PATIENT] = "550 5.1.1 No such user here"
    original = b.message(f"Your results, SSN {MARKER}", subject="Lab results for Jane Roe", sender=DOCTOR,
                         to=PATIENT)
    code, text = await send(portal_world.gateway.client(), DOCTOR, [PATIENT], original)
    assert code == 250
    queue_id = text.split()[-1]
    report = await eventually(lambda: next((m for m in portal_world.clinic.messages if m.sender == ""), None),
                              timeout=20)
    assert report.recipients == [DOCTOR]
    assert b"Status: 5.1.1" in report.content and PATIENT.encode() in report.content
    assert MARKER.encode() not in report.content and b"Jane Roe" not in report.content
    assert b"/m/" not in report.content  # not the link either: headers only
    directory = portal_world.gateway.gateway.audit.directory
    assert directory is not None
    records = [json.loads(line) for path in sorted(directory.glob("audit-*.jsonl"))
               for line in path.read_text().splitlines()]
    results = [r["event"] for r in records if r["queue_id"] == queue_id and r.get("recipient") == PATIENT
               and r["event"] in ("delivered", "bounced")]
    assert results == ["delivered", "bounced"]  # stored in the portal, then failed: nobody was told
