"""A mail world with the portal on: a clinic whose MX has verified TLS (replies go there), a
patient whose MX has no STARTTLS and who has no keys (so mail to them goes to the portal)."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import RunningGateway, free_port, send
from tests.delivery.conftest import MailWorld
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

DOCTOR, PATIENT = "dr@clinic-tls.test", "pat@patient.test"
RECORDS = {
    ("clinic-tls.test", "MX"): ["10 mx.clinic-tls.test."], ("mx.clinic-tls.test", "A"): ["127.0.0.28"],
    ("patient.test", "MX"): ["10 mx.patient.test."], ("mx.patient.test", "A"): ["127.0.0.21"],
}
PDF = b.pdf(["Glucose 5.4"])
MARKER = "219-45-6789"


@dataclass
class PortalWorld:
    gateway: RunningGateway
    clinic: Sink
    patient: Sink
    base: str
    store_dir: Path

    async def send_results(self, subject: str = "Lab results for Jane Roe") -> str:
        """Mail the patient a protected message; returns the link from the notification."""
        before = len(self.patient.messages)
        original = b.message(f"Your results, SSN {MARKER}", subject=subject, sender=DOCTOR, to=PATIENT,
                             attachments=[("labs.pdf", PDF, "application/pdf")])
        code, _ = await send(self.gateway.client(), DOCTOR, [PATIENT], original)
        assert code == 250
        notice = await eventually(lambda: self.patient.messages[before:])
        text = email.message_from_bytes(notice[0].content, policy=email.policy.default)
        link = re.search(rf"{re.escape(self.base)}/m/[A-Za-z0-9_-]+",
                         text.get_body(("plain",)).get_content())
        assert link is not None
        return link.group(0)

    async def passcode(self, after: int) -> str:
        """The passcode in the first passcode mail after the patient's first `after` messages."""
        mail = await eventually(lambda: next((m for m in self.patient.messages[after:]
                                              if b"Subject: Your passcode" in m.content), None))
        code = re.search(rb"passcode is (\d{6})", mail.content)
        assert code is not None
        return code.group(1).decode()


async def start_portal_world(world: MailWorld, tmp_path: Path, *, scheme: str = "http",
                             records: dict[tuple[str, str], list[str]] | None = None,
                             config: dict[str, object] | None = None, **portal: object) -> PortalWorld:
    """`records` are added to the DNS, `config` to the gateway's, `portal` to its portal section."""
    await world.start_dns({**RECORDS, **(records or {})})
    clinic = await world.sink("127.0.0.28", tls_name="mx.clinic-tls.test")
    patient = await world.sink("127.0.0.21")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    port = free_port()
    base = f"{scheme}://127.0.0.1:{port}"
    gateway = await world.gateway({
        "policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0},
        "portal": {"enabled": True, "listen": f"127.0.0.1:{port}", "base_url": base,
                   "store_dir": str(tmp_path / "portal"), "key_file": str(tmp_path / "portal.key"),
                   "branding": {"organization": "Example Clinic",
                                "support_contact": "the patient line, +1 555 0100"}, **portal},
        **(config or {})})
    return PortalWorld(gateway, clinic, patient, base, tmp_path / "portal")
