"""A DSN about a protected (PHI) message is protected like the message: it never goes in clear
to a sender domain without TLS. A DSN about an unprotected message returns only the header
fields that identify it: no Subject."""

from __future__ import annotations

from pathlib import Path

from gateway.spool import QueueState
from tests.conftest import send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
SSN = "219-45-6789"


async def start(world: MailWorld, tmp_path: Path):  # type: ignore[no-untyped-def]
    await world.start_dns(RECORDS)
    clinic = await world.sink("127.0.0.21", tls_name="mx.clinic.test")
    clinic.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    gateway = await world.gateway({"policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0}})
    return gateway, clinic


async def test_a_bounce_of_a_phi_message_never_goes_in_clear(world: MailWorld, tmp_path: Path) -> None:
    gateway, _ = await start(world, tmp_path)
    raw = b.message(f"Results, SSN {SSN}", subject=f"SSN {SSN} results", sender=SENDER, to="gone@clinic.test")
    code, _ = await send(gateway.client(), SENDER, ["gone@clinic.test"], raw)
    assert code == 250
    # The sender's MX offers no STARTTLS and the portal is off: the DSN waits in hold/.
    held = await eventually(lambda: gateway.queued(QueueState.HOLD), timeout=20)
    report = gateway.spool.content(held[0], QueueState.HOLD)
    assert b"multipart/report" in report
    assert world.dsns() == []
    assert world.sender_sink is not None
    assert not any(SSN.encode() in m.content for m in world.sender_sink.messages)


async def test_a_bounce_of_an_unprotected_message_returns_no_subject(
        world: MailWorld, tmp_path: Path) -> None:
    gateway, _ = await start(world, tmp_path)
    raw = b.message("See you Tuesday", subject="Appointment for Jane Roe", sender=SENDER,
                    to="gone@clinic.test", message_id="<appt-1@hospital.test>")
    code, _ = await send(gateway.client(), SENDER, ["gone@clinic.test"], raw)
    assert code == 250
    [report] = await eventually(world.dsns, timeout=20)
    text = report.as_string()
    assert "<appt-1@hospital.test>" in text and "Status: 5.1.1" in text
    assert "Jane Roe" not in text and "Subject: Appointment" not in text
