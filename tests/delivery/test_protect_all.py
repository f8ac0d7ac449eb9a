"""The shipped default, end to end over SMTP: with `protect: all` a message without any PHI to a
server without STARTTLS goes to the secure portal, never in clear; an `allow` rule for a named
recipient domain lets the same message go with opportunistic TLS (here: none offered, so clear)."""

from __future__ import annotations

from pathlib import Path

from gateway.policies import builtin_directory
from tests.conftest import send
from tests.delivery.conftest import MailWorld
from tests.delivery.portal_world import DOCTOR, PATIENT, start_portal_world
from tests.polling import eventually
from tests.stages.dlp import builders as b

BODY = "See you at the staff lunch on Friday."


async def test_a_message_without_phi_goes_to_the_portal_not_in_clear(
        world: MailWorld, tmp_path: Path) -> None:
    portal = await start_portal_world(world, tmp_path, config={"policies_dir": None})  # the built-in policy
    code, _ = await send(portal.gateway.client(), DOCTOR, [PATIENT],
                         b.message(BODY, subject="Friday", sender=DOCTOR, to=PATIENT))
    assert code == 250
    [notice] = await eventually(lambda: portal.patient.messages, timeout=20)
    assert b"Secure message from" in notice.content and BODY.encode() not in notice.content


async def test_an_allow_rule_for_a_named_domain_sends_with_opportunistic_tls(
        world: MailWorld, tmp_path: Path) -> None:
    policies = tmp_path / "shipped-plus-allow"
    policies.mkdir()
    shipped = (builtin_directory() / "healthcare.yaml").read_text()
    (policies / "healthcare.yaml").write_text(
        shipped + "\n  - name: patients-domain\n    when: {recipients: ['*@patient.test']}\n"
                  "    action: allow\n")
    portal = await start_portal_world(world, tmp_path, config={"policies_dir": str(policies)})
    code, _ = await send(portal.gateway.client(), DOCTOR, [PATIENT],
                         b.message(BODY, subject="Friday", sender=DOCTOR, to=PATIENT))
    assert code == 250
    [received] = await eventually(lambda: portal.patient.messages, timeout=20)
    assert BODY.encode() in received.content and received.tls_version is None
