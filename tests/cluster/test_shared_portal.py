"""The portal store in PostgreSQL: a message stored through node A is opened, with a passcode,
through node B (and the session works on either node); a wrong passcode counts on every node;
nothing readable is in the database."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import psycopg

from gateway.portal.store import message_id_of, open_store
from gateway.state.pgportal import PgPortalRecords
from gateway.state.postgres import Database
from tests.cluster.conftest import ClusterWorld
from tests.conftest import RunningGateway, free_port, send
from tests.delivery.portal_world import DOCTOR, MARKER, PATIENT, PDF, RECORDS
from tests.polling import eventually
from tests.stages.dlp import builders as b


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


async def portal_node(world: ClusterWorld, node_id: str, tmp_path: Path) -> tuple[RunningGateway, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    policies = tmp_path / "policies"
    if not policies.exists():
        policies.mkdir()
        (policies / "p.yaml").write_text(
            "match: first\nprotect: sensitive\n"
            "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    node = await world.node(node_id, sections={
        "policies_dir": str(policies), "dlp": {"workers": 0},
        # Every node has the same portal key (docs/cluster.md); each its own store_dir, unused.
        "portal": {"enabled": True, "listen": f"127.0.0.1:{port}", "base_url": base,
                   "key_file": str(tmp_path / "portal.key"), "store_dir": f"var/portal-{node_id}"}})
    return node, base


async def test_a_message_stored_through_node_a_is_read_with_a_passcode_through_node_b(
        cluster_world: ClusterWorld, tmp_path: Path) -> None:
    await cluster_world.start_dns(RECORDS)
    await cluster_world.sink("127.0.0.28", tls_name="mx.clinic-tls.test")
    patient = await cluster_world.sink("127.0.0.21")
    node_a, base_a = await portal_node(cluster_world, "node-a", tmp_path)
    _, base_b = await portal_node(cluster_world, "node-b", tmp_path)

    original = b.message(f"Your results, SSN {MARKER}", subject="Lab results", sender=DOCTOR, to=PATIENT,
                         attachments=[("labs.pdf", PDF, "application/pdf")])
    assert (await send(node_a.client(), DOCTOR, [PATIENT], original))[0] == 250
    [notice] = await eventually(lambda: patient.messages)
    link = re.search(rf"{re.escape(base_a)}(/m/[A-Za-z0-9_-]+)", notice.content.decode())
    assert link is not None
    on_a, on_b = base_a + link.group(1), base_b + link.group(1)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        page = await (await browser.get(on_b)).text()
        assert "You have a secure message" in page
        # A wrong passcode on node A counts on node B's page too (one record).
        await browser.post(f"{on_b}/code", data={"csrf": csrf_of(page)})
        code_mail = await eventually(lambda: next(
            (m for m in patient.messages if b"Subject: Your passcode" in m.content), None))
        code = re.search(rb"passcode is (\d{6})", code_mail.content)
        assert code is not None
        wrong = "000000" if code.group(1) != b"000000" else "111111"
        await browser.post(f"{on_a}/verify", data={"csrf": csrf_of(page), "code": wrong})
        database = Database(cluster_world.database_url)
        try:
            store = open_store(tmp_path / "unused", tmp_path / "portal.key",
                               records=PgPortalRecords(database))
            found = store.load(message_id_of(link.group(1).rpartition("/")[2]))
        finally:
            database.close()
        assert isinstance(found, tuple) and found[0].failed_codes == 1
        response = await browser.post(f"{on_b}/verify", data={"csrf": csrf_of(page),
                                                               "code": code.group(1).decode()})
        reading = await response.text()
        assert response.url.path.endswith("/read") and MARKER in reading
        # The session is a signed cookie: node A opens it too.
        download = await browser.get(f"{on_a}/attachment/0")
        assert await download.read() == PDF

    with psycopg.connect(cluster_world.database_url) as conn:
        blobs = [bytes(row[0]) for row in conn.execute("SELECT blob FROM portal_messages")]
    assert len(blobs) == 1 and MARKER.encode() not in blobs[0] and b"Lab results" not in blobs[0]
    assert not (tmp_path / "node-a" / "var" / "portal-node-a").exists() or \
        not any((tmp_path / "node-a" / "var" / "portal-node-a").glob("*.msg"))
