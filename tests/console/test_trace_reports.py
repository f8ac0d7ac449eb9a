"""Trace, reports and the evidence pack: a message delivered over verified TLS shows its whole
timeline; the report's counts are the audit's; the evidence pack's files check out with
`sha256sum -c` and its records are the audit log's own; health shows the queue."""

from __future__ import annotations

import io
import json
import re
import subprocess
import zipfile
from pathlib import Path

from tests.conftest import free_port, send
from tests.console.conftest import Console, browser, csrf_of
from tests.delivery.conftest import SENDER, MailWorld
from tests.delivery.portal_world import MARKER, PATIENT, start_portal_world
from tests.polling import eventually
from tests.stages.dlp import builders as b


async def deliver_one(console: Console, marker: str) -> str:
    code, text = await send(console.gateway.client(), SENDER, ["dr@clinic.test"],
                            b.message(f"plain note {marker}", sender=SENDER, to="dr@clinic.test"))
    assert code == 250, text
    return text.split()[-1]


async def test_trace_shows_the_timeline_of_a_message_delivered_over_verified_tls(console: Console) -> None:
    await console.add_user("view", "viewer")
    queue_id = await deliver_one(console, "one")
    await eventually(lambda: len(console.sink.messages) == 1)
    async with browser() as client:
        await console.sign_in(client, "view")
        found = await client.get(f"{console.base}/trace", params={"recipient": "dr@clinic.test"})
        page = await found.text()
    section = page[page.index(f'id="q-{queue_id}"'):]
    events = re.findall(r'<tr class="ev-(\w+)">', section)
    assert events[:1] == ["received"] and "policy" in events and "delivered" in events
    delivered = section[section.index('class="ev-delivered"'):]
    assert "verified=True" in delivered and "mx: mx.clinic.test" in delivered and "code: 250" in delivered
    assert "plain note" not in page  # never content


async def test_report_counts_match_the_audit_and_the_evidence_pack_checks_out(
        console: Console, tmp_path: Path) -> None:
    await console.add_user("rev", "reviewer")
    await deliver_one(console, "a")
    await deliver_one(console, "b")
    await console.hold()
    directory = console.gateway.gateway.audit.directory
    assert directory is not None

    def read_audit() -> list[dict[str, object]]:
        return [json.loads(line) for path in sorted(directory.glob("audit-*.jsonl"))
                for line in path.read_text().splitlines()]
    audit = await eventually(lambda: (found := read_audit()) and
                             sum(r["event"] == "delivered" for r in found) == 2 and found)
    async with browser() as client:
        await console.sign_in(client, "rev")
        page = await (await client.get(f"{console.base}/reports")).text()
        received = re.search(r'id="received">(\d+)<', page)
        assert received is not None and int(received.group(1)) == sum(r["event"] == "received" for r in audit)
        assert "<svg" in page and "ssn-review" in page
        csv = await (await client.get(f"{console.base}/reports.csv")).text()
        assert f"results,delivered,{sum(r['event'] == 'delivered' for r in audit)}" in csv
        assert "rules,ssn-review,1" in csv
        response = await client.get(f"{console.base}/reports/evidence.zip")
        pack = await response.read()
        digest = response.headers["X-Mailward-SHA256SUMS"]

    unpacked = tmp_path / "pack"
    zipfile.ZipFile(io.BytesIO(pack)).extractall(unpacked)
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=unpacked, capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert subprocess.run(["sha256sum", "SHA256SUMS"], cwd=unpacked, capture_output=True, text=True,
                          check=True).stdout.split()[0] == digest
    assert json.loads((unpacked / "verification.json").read_text())["ok"] is True
    shipped = [json.loads(line) for line in (unpacked / "records.jsonl").read_text().splitlines()]
    by_seq = {r["seq"]: r for r in read_audit()}
    assert shipped and all(by_seq[r["seq"]] == r for r in shipped)  # the log's own records, sealed
    assert (unpacked / "policies" / "hold.yaml").exists() and (unpacked / "summary.html").exists()
    made = [r for r in read_audit() if r["event"] == "console_evidence_pack"]
    assert [(r["user"], r["sha256sums"]) for r in made] == [("rev", digest)]


async def test_health_shows_the_queue(console: Console) -> None:
    await console.add_user("view", "viewer")
    await console.hold()
    async with browser() as client:
        await console.sign_in(client, "view")
        page = await (await client.get(f"{console.base}/health")).text()
    assert "hold" in page and "listen" in page.lower()


async def test_trace_shows_a_portal_message_stored_notified_and_opened(
        world: MailWorld, tmp_path: Path) -> None:
    port = free_port()
    portal = await start_portal_world(world, tmp_path, config={"console": {
        "listen": f"127.0.0.1:{port}", "users_file": str(tmp_path / "console-users.json")}})
    source = portal.gateway.gateway.config.source
    assert source is not None
    console = Console(portal.gateway, portal.patient, f"http://127.0.0.1:{port}", source)
    await console.add_user("view", "viewer")
    link = await portal.send_results()
    before = len(portal.patient.messages)
    async with browser() as visitor:  # the patient opens it with a passcode
        page = await (await visitor.get(link)).text()
        await visitor.post(f"{link}/code", data={"csrf": csrf_of(page)})
        reading = await visitor.post(f"{link}/verify", data={"csrf": csrf_of(page),
                                                             "code": await portal.passcode(before)})
        assert reading.url.path.endswith("/read")
    async with browser() as client:
        await console.sign_in(client, "view")
        page = await (await client.get(f"{console.base}/trace", params={"recipient": PATIENT})).text()
    events = re.findall(r'<tr class="ev-(\w+)">', page)
    for expected in ("received", "policy", "portal_stored", "portal_code_sent", "portal_viewed"):
        assert expected in events, events
    assert MARKER not in page and "Lab results" not in page
