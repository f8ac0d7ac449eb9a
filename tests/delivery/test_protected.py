"""Recipients that DLP policy says must be protected are never sent in clear: until the
encryption stage offers other methods, they need a verified TLS connection or they wait."""

from __future__ import annotations

from pathlib import Path

from gateway.spool import QueueState
from tests.conftest import message, send
from tests.delivery.conftest import SENDER, MailWorld, eventually

RECORDS = {
    ("plain.test", "MX"): ["10 mx.plain.test."],
    ("mx.plain.test", "A"): ["127.0.0.21"],
    ("secure.test", "MX"): ["10 mx.secure.test."],
    ("mx.secure.test", "A"): ["127.0.0.22"],
}
POLICY = "match: first\nrules:\n  - {name: phi, action: encrypt, when: {detectors: {ssn: 1}}}\n"


async def test_protected_recipient_waits_for_verified_tls_and_the_other_is_delivered(
        world: MailWorld, tmp_path: Path) -> None:
    await world.start_dns(RECORDS)
    plain = await world.sink("127.0.0.21")  # no STARTTLS at all
    secure = await world.sink("127.0.0.22", tls_name="mx.secure.test")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    gateway = await world.gateway({"policies_dir": str(policies), "dlp": {"workers": 0}})
    client = gateway.client()
    code, _ = await send(client, SENDER, ["pat@plain.test", "pat@secure.test"],
                         message("SSN 219-45-6789"))
    assert code == 250
    code, _ = await send(gateway.client(), SENDER, ["other@plain.test"], message("Lunch"))
    assert code == 250
    await eventually(lambda: secure.messages and plain.messages and gateway.queued(QueueState.DEFERRED))
    assert secure.deliveries() == [("pat@secure.test", "SSN 219-45-6789")]
    assert secure.messages[0].tls_version is not None
    assert plain.deliveries() == [("other@plain.test", "Lunch")]  # unprotected mail still flows
    [queue_id] = gateway.queued(QueueState.DEFERRED)
    status = gateway.spool.load(queue_id, QueueState.DEFERRED).statuses[0]
    assert status.state.value == "deferred" and "TLS" in status.reply
