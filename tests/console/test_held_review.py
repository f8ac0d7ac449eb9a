"""The console's sign-in (password, then TOTP enrolled at the first sign-in) and held-mail
review: a DLP-held message is listed, a reviewer opens it and releases it with a reason, it is
delivered, and the audit log names the reviewer; a viewer sees no content and cannot act."""

from __future__ import annotations

import json

from gateway.spool import QueueState
from tests.console.conftest import MARKER, Console, browser, csrf_of
from tests.polling import eventually


def audit_records(console: Console) -> list[dict[str, object]]:
    directory = console.gateway.gateway.audit.directory
    assert directory is not None
    return [json.loads(line) for path in sorted(directory.glob("audit-*.jsonl"))
            for line in path.read_text().splitlines()]


async def test_a_reviewer_signs_in_with_totp_and_releases_a_held_message_with_a_reason(
        console: Console) -> None:
    await console.add_user("rev", "reviewer")
    queue_id = await console.hold(subject="Lab results for Jane Roe")
    async with browser() as client:
        response = await console.sign_in(client, "rev")
        assert response.url.path == "/held"
        listing = await response.text()
        assert queue_id in listing and "ssn-review" in listing and "dr@clinic.test" in listing
        assert "ssn 1" in listing  # what the scan found, as counts
        assert MARKER not in listing  # the list shows who and why, not content

        page = await (await client.get(f"{console.base}/held/{queue_id}")).text()
        assert "Lab results for Jane Roe" in page and MARKER in page  # a reviewer reads it
        refused = await client.post(f"{console.base}/held", data={
            "csrf": csrf_of(page), "queue_id": queue_id, "action": "release", "reason": ""})
        assert "Give a reason" in await refused.text()
        assert console.sink.messages == []
        done = await client.post(f"{console.base}/held", data={
            "csrf": csrf_of(page), "queue_id": queue_id, "action": "release", "reason": "checked with lab"})
        assert "1 message(s) released" in await done.text()

    await eventually(lambda: len(console.sink.messages) == 1)
    assert console.sink.messages[0].recipients == ["dr@clinic.test"]
    records = audit_records(console)
    released = [r for r in records if r["event"] == "released"]
    assert released == [{**released[0], "queue_id": queue_id, "user": "rev", "by": "console",
                         "reason": "checked with lab"}]
    events = [r["event"] for r in records if str(r["event"]).startswith("console_")]
    assert events[:4] == ["console_user_added", "console_totp_enrolled", "console_signin", "console_viewed"]


async def test_a_viewer_sees_no_content_and_cannot_release(console: Console) -> None:
    await console.add_user("view", "viewer")
    queue_id = await console.hold()
    async with browser() as client:
        listing = await (await console.sign_in(client, "view")).text()
        assert queue_id in listing and 'id="release"' not in listing
        page = await (await client.get(f"{console.base}/held/{queue_id}")).text()
        assert MARKER not in page and "Results" not in page and 'id="release"' not in page
        for path in (f"/held/{queue_id}/body", f"/held/{queue_id}/attachment/0"):
            assert (await client.get(f"{console.base}{path}")).status == 403
        forbidden = await client.post(f"{console.base}/held", data={
            "csrf": csrf_of(page), "queue_id": queue_id, "action": "release", "reason": "let it go"})
        assert forbidden.status == 403
    assert console.sink.messages == []
    assert queue_id in console.gateway.queued(QueueState.HOLD)


async def test_a_deleted_held_message_is_gone_and_audited(console: Console) -> None:
    await console.add_user("rev", "reviewer")
    queue_id = await console.hold()
    async with browser() as client:
        page = await (await console.sign_in(client, "rev")).text()
        done = await client.post(f"{console.base}/held", data={
            "csrf": csrf_of(page), "queue_id": queue_id, "action": "delete", "reason": "sent by mistake"})
        assert "1 message(s) deleted" in await done.text()
        assert (await client.get(f"{console.base}/held/{queue_id}")).status == 404
    deleted = [r for r in audit_records(console) if r["event"] == "deleted"]
    assert [(r["queue_id"], r["user"], r["reason"]) for r in deleted] == \
        [(queue_id, "rev", "sent by mistake")]


async def test_release_protected_sends_a_protected_copy_and_never_plaintext(console: Console) -> None:
    await console.add_user("rev", "reviewer")
    queue_id = await console.hold()
    async with browser() as client:
        page = await (await console.sign_in(client, "rev")).text()
        done = await client.post(f"{console.base}/held", data={"csrf": csrf_of(page), "queue_id": queue_id,
                                                               "action": "release-protected", "reason": "ok"})
        assert "1 message(s) released" in await done.text()
    await eventually(lambda: len(console.sink.messages) == 1)
    assert console.sink.messages[0].tls_version is not None  # verified TLS: the strongest available
    records = audit_records(console)
    [released] = [r for r in records if r["event"] == "released"]
    assert released["queue_id"] == queue_id and released["protection"] == "protected"
    new_id = released["new_queue_id"]
    await eventually(lambda: any(r["event"] == "delivered" and r["queue_id"] == new_id
                                 for r in audit_records(console)))
    delivered = [r for r in audit_records(console) if r["event"] == "delivered"]
    assert [(r["queue_id"], r["protection"]) for r in delivered] == [(new_id, "tls-verified")]
    assert queue_id not in console.gateway.queued(QueueState.HOLD)
