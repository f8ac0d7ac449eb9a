"""The audit trail of real traffic: messages that are delivered, protected, signed, deferred,
bounced, held, released and deleted leave the records SPEC §5 names, the chain verifies with
`mailward audit verify`, search and export find them, and no subject or body text appears in any
audit record, log line or metric."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from gateway import metrics
from gateway.spool import QueueState
from tests.conftest import RunningGateway, mailward_cli, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.dkimverify import make_key
from tests.polling import eventually
from tests.stages.dlp import builders as b

SUBJECT_MARKER, BODY_MARKER, SSN = "Zebrafinch", "Quillwort", "219-45-6789"
RECORDS = {
    ("verified.test", "MX"): ["10 mx.verified.test."], ("mx.verified.test", "A"): ["127.0.0.22"],
    ("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"],
}



async def submit(gateway: RunningGateway, to: str, body: str) -> str:
    raw = b.message(f"{BODY_MARKER} {body}", subject=f"{SUBJECT_MARKER} results", sender=SENDER, to=to)
    code, text = await send(gateway.client(), SENDER, [to], raw)
    assert code == 250, text
    return text.split()[-1]


def audit_records(gateway: RunningGateway) -> list[dict[str, Any]]:
    directory = gateway.gateway.audit.directory
    assert directory is not None
    return [json.loads(line) for path in sorted(directory.glob("audit-*.jsonl"))
            for line in path.read_text().splitlines()]


async def test_every_event_is_audited_verifiable_searchable_and_free_of_content(
        world: MailWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await world.start_dns({**RECORDS, **dict([(key := make_key(tmp_path, "hospital.test", "s1")).dns])})
    await world.sink("127.0.0.22", tls_name="mx.verified.test")
    clinic = await world.sink("127.0.0.21")
    clinic.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    clinic.rcpt_replies["busy@clinic.test"] = "451 4.2.1 Mailbox busy, try later"
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\nrules: [{name: phi, action: encrypt, protection: [tls],\n"
        "                 when: {detectors: {ssn: 1}}}]\n")
    gateway = await world.gateway({"policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0},
                                   "domains": {"hospital.test": {"dkim": [key.config]}}},
                                  retry_schedule=["1h"])
    config_file = gateway.gateway.config.source
    assert config_file is not None

    protected = await submit(gateway, "pat@verified.test", f"SSN {SSN}")
    bounced = await submit(gateway, "gone@clinic.test", "hello")
    deferred = await submit(gateway, "busy@clinic.test", "hello")
    await eventually(lambda: len(gateway.queued(QueueState.DEFERRED)) == 1
                     and not gateway.queued(QueueState.INCOMING) and not gateway.queued(QueueState.ACTIVE))
    await eventually(lambda: world.dsns())
    for action in ("hold", "release", "hold", "delete"):
        code, out = await mailward_cli(config_file, "queue", action, deferred)
        assert code == 0, out
        if action == "release":  # tried again at once, and deferred again
            await eventually(lambda: gateway.queued(QueueState.DEFERRED))

    records = audit_records(gateway)
    by_queue = {queue_id: [r["event"] for r in records if r.get("queue_id") == queue_id]
                for queue_id in (protected, bounced, deferred)}
    assert by_queue[protected] == ["received", "policy", "signed", "protection", "delivered"]
    assert by_queue[bounced] == ["received", "policy", "signed", "bounced", "suppressed", "dsn"]
    assert by_queue[deferred] == ["received", "policy", "signed", "deferred", "held", "released", "signed",
                                  "deferred", "held", "deleted"]
    received = next(r for r in records if r["event"] == "received" and r["queue_id"] == protected)
    assert received["sender"] == SENDER and received["recipients"] == ["pat@verified.test"]
    assert received["client"] == "127.0.0.1" and received["message_id"]
    policy = next(r for r in records if r["event"] == "policy" and r["queue_id"] == protected)
    assert (policy["action"], policy["rules"], policy["detectors"]) == ("encrypt", ["phi"], {"ssn": 1})
    delivered = next(r for r in records if r["event"] == "delivered")
    assert delivered["mx"] == "mx.verified.test" and delivered["ip"] == "127.0.0.22"
    assert delivered["egress_ip"].startswith("127.") and delivered["code"] == 250
    assert delivered["tls"]["verified"] is True and delivered["protection"] == "tls-verified"
    signed = next(r for r in records if r["event"] == "signed")
    assert (signed["domain"], signed["selectors"]) == ("hospital.test", ["s1"])
    admin = next(r for r in records if r["event"] == "deleted")
    assert admin["by"] == "admin" and admin["user"]

    code, out = await mailward_cli(config_file, "audit", "verify")
    assert code == 0 and "chain intact" in out, out
    code, out = await mailward_cli(config_file, "audit", "search", "--recipient", "gone@clinic.test")
    assert {json.loads(line)["queue_id"] for line in out.splitlines()} == {bounced}
    code, out = await mailward_cli(config_file, "audit", "search", "--message-id", received["message_id"])
    assert [json.loads(line)["event"] for line in out.splitlines()] == by_queue[protected]
    export = tmp_path / "export.csv"
    code, out = await mailward_cli(config_file, "audit", "export", "--since", "2000-01-01", "--format", "csv",
                               "--output", str(export))
    summary = json.loads(out)["summary"]
    assert summary["messages_received"] >= 3 and summary["results"]["bounced"] >= 1
    assert summary["protection"]["tls-verified"] == 1
    rows = list(csv.DictReader(io.StringIO(export.read_text())))
    assert {row["event"] for row in rows} >= {"received", "delivered", "bounced", "deleted"}

    # No subject or body text anywhere: audit files, log lines, metrics.
    directory = gateway.gateway.audit.directory
    assert directory is not None
    for path in directory.iterdir():
        for marker in (SUBJECT_MARKER, BODY_MARKER, SSN):
            assert marker.encode() not in path.read_bytes(), (marker, path.name)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    exposition = generate_latest(metrics.REGISTRY).decode()
    for marker in (SUBJECT_MARKER, BODY_MARKER, SSN):
        assert marker not in logged and marker not in exposition


async def test_a_tls_failure_is_audited_with_the_mx_host_and_address(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    await world.sink("127.0.0.21", tls_name="somebody-else.test")  # a certificate for another name
    gateway = await world.gateway(tls_policy={"clinic.test": "verify"}, retry_schedule=["1h"])
    queue_id = await submit(gateway, "pat@clinic.test", "note")
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    [deferred] = [r for r in audit_records(gateway) if r["event"] == "deferred" and r["queue_id"] == queue_id]
    assert (deferred["mx"], deferred["ip"], deferred["code"]) == ("mx.clinic.test", "127.0.0.21", 450)
