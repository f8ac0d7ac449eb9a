"""DKIM signing end to end: what the receiving MX gets verifies with verifiers that are not the
gateway's own (mailauth, and Debian's Mail::DKIM for RSA) against keys in the test DNS server,
for plain, 8-bit, S/MIME, PGP and DSN messages; Ed25519 and dual signatures; tampering breaks it.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway import metrics
from tests.conftest import HOSTNAME, RunningGateway, send
from tests.crypto.keys import GnuPG, smime_identity
from tests.delivery.conftest import SENDER, MailWorld
from tests.delivery.portal_world import PATIENT, start_portal_world
from tests.dkimverify import PublishedKey, mail_dkim, mailauth, make_key
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

RECORDS = {
    ("clinic.test", "MX"): ["10 mx.clinic.test."],
    ("mx.clinic.test", "A"): ["127.0.0.21"],
    ("lab.test", "MX"): ["10 mx.lab.test."],
    ("mx.lab.test", "A"): ["127.0.0.21"],
}
SSN = "219-45-6789"


class SignedWorld:
    """The mail world with DKIM keys for hospital.test (the sender) and the gateway's domain."""

    def __init__(self, world: MailWorld, tmp_path: Path) -> None:
        self.world, self.tmp_path = world, tmp_path
        self.key_dir = tmp_path / "dkim"
        self.keys: list[PublishedKey] = []
        self.sink: Sink | None = None

    def key(self, domain: str, selector: str, algorithm: Any = "rsa-sha256") -> PublishedKey:
        key = make_key(self.key_dir, domain, selector, algorithm)
        self.keys.append(key)
        return key

    async def start(self, domains: dict[str, list[PublishedKey]],
                    config: dict[str, Any] | None = None) -> RunningGateway:
        await self.world.start_dns({**RECORDS, **dict(key.dns for key in self.keys)})
        self.sink = await self.world.sink("127.0.0.21")
        settings: dict[str, Any] = {
            "domains": {domain: {"dkim": [key.config for key in keys]} for domain, keys in domains.items()},
            "dlp": {"workers": 0}, **(config or {})}
        return await self.world.gateway(settings)

    async def relay(self, gateway: RunningGateway, raw: bytes, to: str = "pat@clinic.test") -> bytes:
        assert self.sink is not None
        before = len(self.sink.messages)
        code, text = await send(gateway.client(), SENDER, [to], raw)
        assert code == 250, text
        await eventually(lambda: len(self.sink.messages) > before)  # type: ignore[union-attr]
        return self.sink.messages[-1].content

    async def verify(self, content: bytes) -> list[tuple[str, str, str]]:
        """(domain, algorithm, result) per signature, by mailauth."""
        results = await mailauth(content, self.world.dns_port, self.tmp_path)
        return [(r["domain"], r["algorithm"], r["result"]) for r in results]


async def test_plain_message_verifies_with_mailauth_and_mail_dkim(world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    key = signed.key("hospital.test", "s1")
    gateway = await signed.start({"hospital.test": [key]})
    before = metrics.DKIM_SIGNATURES.labels(domain="hospital.test", algorithm="rsa-sha256")._value.get()
    content = await signed.relay(gateway, b.message("Your appointment is confirmed.", sender=SENDER,
                                                    to="pat@clinic.test"))
    assert content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=hospital.test;")
    assert await signed.verify(content) == [("hospital.test", "rsa-sha256", "pass")]
    assert await mail_dkim(content, world.dns_port, tmp_path) == ["hospital.test s1 rsa-sha256 pass"]
    after = metrics.DKIM_SIGNATURES.labels(domain="hospital.test", algorithm="rsa-sha256")._value.get()
    assert after == before + 1


async def test_eight_bit_body_with_bare_line_feeds_verifies(world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1")]})
    raw = (f"From: Dr Ä <{SENDER}>\nTo: pat@clinic.test\nSubject: Befund\nMIME-Version: 1.0\n"
           "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
           "Grüße aus der Praxis   \n\twith tabs\t and  spaces\n\n\n").encode()
    content = await signed.relay(gateway, raw)
    assert "Grüße".encode() in content
    assert await signed.verify(content) == [("hospital.test", "rsa-sha256", "pass")]
    assert await mail_dkim(content, world.dns_port, tmp_path) == ["hospital.test s1 rsa-sha256 pass"]


async def test_ed25519_and_dual_signatures_verify(world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    rsa_key = signed.key("hospital.test", "r1")
    ed_key = signed.key("hospital.test", "e1", "ed25519-sha256")
    gateway = await signed.start({"hospital.test": [rsa_key, ed_key]})
    content = await signed.relay(gateway, b.message("Dual", sender=SENDER, to="pat@clinic.test"))
    assert sorted(await signed.verify(content)) == [("hospital.test", "ed25519-sha256", "pass"),
                                                    ("hospital.test", "rsa-sha256", "pass")]


async def test_only_the_active_key_signs_while_the_retired_one_stays_listed(
        world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    old, new = signed.key("hospital.test", "old"), signed.key("hospital.test", "new")
    gateway = await signed.start({"hospital.test": []}, {"domains": {"hospital.test": {"dkim": [
        {**old.config, "active": False}, new.config]}}})
    content = await signed.relay(gateway, b.message("Rotation", sender=SENDER, to="pat@clinic.test"))
    assert content.count(b"DKIM-Signature:") == 1 and b"s=new;" in content
    assert await signed.verify(content) == [("hospital.test", "rsa-sha256", "pass")]


async def test_a_subdomain_sender_is_signed_by_the_parent_domain(world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1")]})
    content = await signed.relay(gateway, b.message("Lab", sender="lab@results.hospital.test",
                                                    to="pat@clinic.test"))
    assert await signed.verify(content) == [("hospital.test", "rsa-sha256", "pass")]


async def test_a_sender_domain_without_keys_goes_out_unsigned_and_is_counted(
        world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1")]})
    before = metrics.DKIM_UNSIGNED.labels("no_domain")._value.get()
    content = await signed.relay(gateway, b.message("Other", sender="someone@elsewhere.test",
                                                    to="pat@clinic.test"))
    assert b"DKIM-Signature" not in content
    assert metrics.DKIM_UNSIGNED.labels("no_domain")._value.get() == before + 1


async def test_a_second_from_or_a_changed_subject_breaks_the_signature(
        world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1"),
                                                    signed.key("hospital.test", "e1", "ed25519-sha256")]})
    content = await signed.relay(gateway, b.message("Tamper", subject="Your results", sender=SENDER,
                                                    to="pat@clinic.test"))
    head, _, body = content.partition(b"\r\n\r\n")
    second_from = head + b"\r\nFrom: attacker@evil.test\r\n\r\n" + body
    new_subject = content.replace(b"Subject: Your results", b"Subject: Your invoice")
    for tampered in (second_from, new_subject):
        results = await signed.verify(tampered)
        assert len(results) == 2 and all(result != "pass" for _, _, result in results), results
    assert (await mail_dkim(new_subject, world.dns_port, tmp_path))[0].endswith(" fail")


async def test_smime_and_pgp_copies_are_signed_after_encryption(world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    keys = tmp_path / "keys"
    smime_identity(keys / "smime", "smime@clinic.test")
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.make_key("pgp@clinic.test")
    gnupg.export("pgp@clinic.test", keys / "pgp" / "pgp@clinic.test.asc")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text("match: first\nprotect: sensitive\n"
                                     "rules:\n  - name: phi\n    action: encrypt\n"
                                     "    protection: [smime, pgp]\n    when: {detectors: {ssn: 1}}\n")
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1")]}, {
        "policies_dir": str(policies),
        "keys": {"smime_dir": str(keys / "smime"), "pgp_dir": str(keys / "pgp")}})
    for to, content_type in (("smime@clinic.test", b"application/pkcs7-mime"),
                             ("pgp@clinic.test", b"multipart/encrypted")):
        content = await signed.relay(gateway, b.message(f"SSN {SSN}", sender=SENDER, to=to), to=to)
        assert SSN.encode() not in content and content_type in content
        assert await signed.verify(content) == [("hospital.test", "rsa-sha256", "pass")]


async def test_dsns_are_signed_with_the_gateways_own_domain(world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1")],
                                  HOSTNAME: [signed.key(HOSTNAME, "gw", "ed25519-sha256")]})
    assert signed.sink is not None
    signed.sink.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    code, _ = await send(gateway.client(), SENDER, ["gone@clinic.test"],
                         b.message("Bounce me", sender=SENDER, to="gone@clinic.test"))
    assert code == 250
    assert world.sender_sink is not None
    [report] = await eventually(lambda: [m for m in world.sender_sink.messages if m.sender == ""])  # type: ignore[union-attr]
    assert report.content.startswith(b"DKIM-Signature:")
    assert await signed.verify(report.content) == [(HOSTNAME, "ed25519-sha256", "pass")]


async def test_a_reload_swaps_in_the_new_active_key_and_refuses_a_broken_one(
        world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    old, new = signed.key("hospital.test", "old"), signed.key("hospital.test", "new")
    gateway = await signed.start({"hospital.test": [old]})
    content = await signed.relay(gateway, b.message("Before", sender=SENDER, to="pat@clinic.test"))
    assert b"s=old;" in content
    config_file = gateway.gateway.config.source
    assert config_file is not None
    settings = yaml.safe_load(config_file.read_text())
    settings["domains"]["hospital.test"]["dkim"] = [{**old.config, "active": False}, new.config]
    config_file.write_text(yaml.safe_dump(settings))
    assert gateway.gateway.reload()
    content = await signed.relay(gateway, b.message("After", sender=SENDER, to="pat@clinic.test"))
    assert b"s=new;" in content and b"s=old;" not in content
    assert await signed.verify(content) == [("hospital.test", "rsa-sha256", "pass")]
    new.key_file.chmod(0o644)  # a key others can read is refused; the running keys stay
    assert not gateway.gateway.reload()
    content = await signed.relay(gateway, b.message("Still", sender=SENDER, to="pat@clinic.test"))
    assert b"s=new;" in content


async def test_portal_notifications_and_passcodes_are_signed_with_the_gateways_domain(
        world: MailWorld, tmp_path: Path) -> None:
    key = make_key(tmp_path, HOSTNAME, "gw")
    portal = await start_portal_world(world, tmp_path, records=dict([key.dns]),
                                      config={"domains": {HOSTNAME: {"dkim": [key.config]}}})
    link = await portal.send_results()
    [notice] = portal.patient.messages
    assert b"no-reply@mailward.test" in notice.content
    results = await mailauth(notice.content, world.dns_port, tmp_path)
    assert [(r["domain"], r["result"]) for r in results] == [(HOSTNAME, "pass")]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        page = await (await browser.get(link)).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        await browser.post(f"{link}/code", data={"csrf": csrf.group(1)})
        code_mail = await eventually(lambda: next(
            (m for m in portal.patient.messages if b"Subject: Your passcode" in m.content), None))
        results = await mailauth(code_mail.content, world.dns_port, tmp_path)
        assert [(r["domain"], r["result"]) for r in results] == [(HOSTNAME, "pass")]
        code = re.search(rb"passcode is (\d{6})", code_mail.content)
        assert code is not None
        opened = await browser.post(f"{link}/verify",
                                    data={"csrf": csrf.group(1), "code": code.group(1).decode()})
        reading = await opened.text()
        reading_csrf = re.search(r'name="csrf" value="([^"]+)"', reading)
        assert reading_csrf is not None
        await browser.post(f"{link}/reply", data={"csrf": reading_csrf.group(1), "text": "Thank you!"})
    # The secure reply passes DMARC: From the gateway's domain, signed with its key.
    [reply] = await eventually(lambda: portal.clinic.messages)
    parsed = email.message_from_bytes(reply.content, policy=email.policy.default)
    assert str(parsed["From"]) == f'"{PATIENT} via secure portal" <no-reply@{HOSTNAME}>'
    assert str(parsed["Reply-To"]) == PATIENT and reply.sender == f"no-reply@{HOSTNAME}"
    results = await mailauth(reply.content, world.dns_port, tmp_path)
    assert [(r["domain"], r["result"]) for r in results] == [(HOSTNAME, "pass")]


async def test_a_message_to_several_domains_is_signed_once_and_verifies_at_each(
        world: MailWorld, tmp_path: Path) -> None:
    signed = SignedWorld(world, tmp_path)
    gateway = await signed.start({"hospital.test": [signed.key("hospital.test", "s1")]})
    assert signed.sink is not None
    signatures = metrics.DKIM_SIGNATURES.labels(domain="hospital.test", algorithm="rsa-sha256")
    before = signatures._value.get()
    code, _ = await send(gateway.client(), SENDER, ["pat@clinic.test", "tech@lab.test"],
                         b.message("Two domains", sender=SENDER, to="pat@clinic.test, tech@lab.test"))
    assert code == 250
    copies = await eventually(lambda: len(signed.sink.messages) == 2 and signed.sink.messages)  # type: ignore[union-attr]
    assert signatures._value.get() == before + 1
    assert copies[0].content == copies[1].content
    assert await signed.verify(copies[1].content) == [("hospital.test", "rsa-sha256", "pass")]
