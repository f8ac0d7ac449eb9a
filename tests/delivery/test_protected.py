"""Protected delivery, end to end: recipients that policy says must be protected get verified TLS,
else S/MIME or PGP when a key is on file, else the portal (held until it exists). Never plaintext.

Receivers on loopback: one with a certificate for its MX name, one with a certificate for another
name, one without STARTTLS. What they receive is decrypted with `openssl cms` and `gpg`.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

from gateway.delivery.service import DeliveryService
from gateway.spool import QueueState
from tests.conftest import RunningGateway, send
from tests.crypto.keys import GnuPG, SmimeIdentity, openssl_decrypt, smime_identity
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

RECORDS = {
    ("verified.test", "MX"): ["10 mx.verified.test."],
    ("mx.verified.test", "A"): ["127.0.0.22"],
    ("wrongname.test", "MX"): ["10 mx.wrongname.test."],
    ("mx.wrongname.test", "A"): ["127.0.0.23"],
    ("plain.test", "MX"): ["10 mx.plain.test."],
    ("mx.plain.test", "A"): ["127.0.0.21"],
}
SSN = "219-45-6789"


def policy(order: str = "[tls, smime, pgp, portal]", receipt: bool = False) -> str:
    return ("match: first\nprotect: sensitive\nrules:\n  - name: phi\n    action: encrypt\n"
            f"    protection: {order}\n    receipt: {str(receipt).lower()}\n"
            "    when: {detectors: {ssn: 1}}\n")


class World:
    def __init__(self, world: MailWorld, tmp_path: Path) -> None:
        self.world, self.tmp_path = world, tmp_path
        self.keys = tmp_path / "keys"
        self.gnupg = GnuPG(tmp_path / "gnupg")
        self.sinks: dict[str, Sink] = {}

    async def start(self, order: str = "[tls, smime, pgp, portal]", receipt: bool = False,
                    **delivery: Any) -> RunningGateway:
        await self.world.start_dns(RECORDS)
        self.sinks["verified"] = await self.world.sink("127.0.0.22", tls_name="mx.verified.test")
        self.sinks["wrongname"] = await self.world.sink("127.0.0.23", tls_name="someone-else.test")
        self.sinks["plain"] = await self.world.sink("127.0.0.21")
        policies = self.tmp_path / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "p.yaml").write_text(policy(order, receipt))
        config: dict[str, Any] = {"policies_dir": str(policies), "dlp": {"workers": 0},
                                  "keys": {"smime_dir": str(self.keys / "smime"),
                                           "pgp_dir": str(self.keys / "pgp"),
                                           "neutral_subject": "Secure message from the clinic"}}
        return await self.world.gateway(config, **delivery)

    def smime(self, address: str) -> SmimeIdentity:
        return smime_identity(self.keys / "smime", address)

    def pgp(self, address: str) -> None:
        self.gnupg.make_key(address)
        self.gnupg.export(address, self.keys / "pgp" / f"{address}.asc")


async def submit(gateway: RunningGateway, recipients: list[str], body: str,
                 subject: str = "Results for Jane Roe") -> None:
    raw = b.message(body, subject=subject, sender=SENDER, to=", ".join(recipients))
    code, text = await send(gateway.client(), SENDER, recipients, raw)
    assert code == 250, text


def delivery_service(gateway: RunningGateway) -> DeliveryService:
    assert gateway.gateway.delivery is not None
    return gateway.gateway.delivery


def parsed(content: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


async def test_each_recipient_gets_the_strongest_protection_it_can_receive(
        world: MailWorld, tmp_path: Path) -> None:
    setup = World(world, tmp_path)
    identity = setup.smime("pat@wrongname.test")
    setup.pgp("pat@plain.test")
    gateway = await setup.start()
    recipients = ["pat@verified.test", "pat@wrongname.test", "pat@plain.test", "nokey@plain.test"]
    await submit(gateway, recipients, f"SSN {SSN}")
    await eventually(lambda: gateway.queued(QueueState.HOLD))
    verified, wrongname, plain = (setup.sinks[n] for n in ("verified", "wrongname", "plain"))

    # Verified TLS: the message itself, over a verified TLS session.
    assert verified.deliveries() == [("pat@verified.test", "Results for Jane Roe")]
    assert verified.messages[0].tls_version in ("TLSv1.2", "TLSv1.3")

    # Wrong-name certificate: never in clear; S/MIME, which openssl decrypts.
    [smime_copy] = wrongname.messages
    assert smime_copy.recipients == ["pat@wrongname.test"]
    assert SSN.encode() not in smime_copy.content and b"Jane Roe" not in smime_copy.content
    outer = parsed(smime_copy.content)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer["Subject"] == "Secure message from the clinic"
    inner = parsed(openssl_decrypt(identity, smime_copy.content, tmp_path))
    assert inner["Subject"] == "Results for Jane Roe" and SSN in inner.get_content()

    # No STARTTLS at all: PGP/MIME for the recipient with a key, which gpg decrypts...
    [pgp_copy] = plain.messages
    assert pgp_copy.recipients == ["pat@plain.test"]
    assert SSN.encode() not in pgp_copy.content
    payload = list(parsed(pgp_copy.content).iter_parts())[1].get_payload(decode=True)
    assert SSN in parsed(setup.gnupg.decrypt(payload)).get_content()

    # ... and the recipient with neither TLS nor a key waits for the portal, in hold/.
    [queue_id] = gateway.queued(QueueState.HOLD)
    statuses = gateway.spool.load(queue_id, QueueState.HOLD).statuses
    assert [s.state.value for s in statuses] == ["delivered", "delivered", "delivered", "deferred"]
    assert "secure portal" in statuses[3].reply


async def test_without_any_method_the_recipient_waits_and_nothing_goes_in_clear(
        world: MailWorld, tmp_path: Path) -> None:
    setup = World(world, tmp_path)
    gateway = await setup.start(order="[tls]")
    await submit(gateway, ["pat@plain.test", "pat@wrongname.test"], f"SSN {SSN}")
    [queue_id] = await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert setup.sinks["plain"].messages == [] and setup.sinks["wrongname"].messages == []
    statuses = gateway.spool.load(queue_id, QueueState.DEFERRED).statuses
    assert [s.dsn for s in statuses] == ["4.7.5", "4.7.5"]
    assert "does not offer STARTTLS" in statuses[0].reply
    assert "not verified" in statuses[1].reply


async def test_the_policy_order_decides_smime_before_tls(world: MailWorld, tmp_path: Path) -> None:
    setup = World(world, tmp_path)
    identity = setup.smime("pat@verified.test")
    gateway = await setup.start(order="[smime, tls]")
    await submit(gateway, ["pat@verified.test"], f"SSN {SSN}")
    [copy] = await eventually(lambda: setup.sinks["verified"].messages)
    assert parsed(copy.content).get_content_type() == "application/pkcs7-mime"
    assert SSN in parsed(openssl_decrypt(identity, copy.content, tmp_path)).get_content()


async def test_unprotected_mail_is_not_encrypted_even_when_a_key_exists(
        world: MailWorld, tmp_path: Path) -> None:
    setup = World(world, tmp_path)
    setup.smime("pat@plain.test")
    gateway = await setup.start()
    await submit(gateway, ["pat@plain.test"], "Lunch on Friday?", subject="Lunch")
    [copy] = await eventually(lambda: setup.sinks["plain"].messages)
    assert b"Lunch on Friday?" in copy.content


async def test_sender_gets_a_receipt_of_how_each_recipient_was_protected(
        world: MailWorld, tmp_path: Path) -> None:
    setup = World(world, tmp_path)
    setup.smime("pat@wrongname.test")
    gateway = await setup.start(receipt=True)
    await submit(gateway, ["pat@verified.test", "pat@wrongname.test"], f"SSN {SSN}")
    await eventually(lambda: setup.sinks["verified"].messages and setup.sinks["wrongname"].messages)
    [receipt] = await eventually(lambda: [m for m in world.dsns()
                                          if m["Subject"] == "Delivery and protection receipt"])
    text = receipt.get_content()
    assert "pat@verified.test: delivered over verified TLS" in text
    assert "pat@wrongname.test: delivered encrypted with S/MIME" in text
    assert SSN not in text and "Jane Roe" not in text


async def test_a_recent_verified_tls_failure_is_remembered(world: MailWorld, tmp_path: Path) -> None:
    setup = World(world, tmp_path)
    setup.smime("pat@plain.test")
    gateway = await setup.start(connection_idle_time="0s")  # every send is a new connection
    receiver = setup.sinks["plain"]
    await submit(gateway, ["pat@plain.test"], f"SSN {SSN}")
    await eventually(lambda: len(receiver.messages) == 1)
    first = receiver.connections  # the failed verified-TLS attempt, then the S/MIME copy
    await submit(gateway, ["pat@plain.test"], f"SSN {SSN}")
    await eventually(lambda: len(receiver.messages) == 2)
    assert (first, receiver.connections - first) == (2, 1)  # then S/MIME only: no TLS attempt
    assert delivery_service(gateway).learned.domain("plain.test")["hosts"]["mx.plain.test"]["failure"]
    assert "STARTTLS" in (delivery_service(gateway).learned.recent_verify_failure("plain.test") or "")
