"""DANE (RFC 7672) end to end: TLSA records for the MX host, answered with or without the AD bit
of a validating resolver, and receivers whose certificate matches them or not."""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.resolver import TlsaRecord
from gateway.spool import QueueState
from gateway.transport import probe
from tests.conftest import RunningGateway, message, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

RECORDS = {("dane.test", "MX"): ["10 mx.dane.test."], ("mx.dane.test", "A"): ["127.0.0.25"]}
TLSA_NAME = "_{port}._tcp.mx.dane.test"


def spki_sha256(pem: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(pem)
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def other_key_sha256() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


async def setup(world: MailWorld, *, tlsa: str | None, authenticated: bool, tls_name: str = "mx.dane.test",
                config: dict[str, object] | None = None) -> tuple[RunningGateway, Sink]:
    """The receiver's certificate is for `tls_name` (DANE-EE ignores names); `tlsa` is the
    record's text, with "{pin}" standing for the receiver's own SPKI SHA-256."""
    dns_server = await world.start_dns(RECORDS)
    receiver = await world.sink("127.0.0.25", tls_name=tls_name)
    assert world.last_certificate is not None
    name = TLSA_NAME.format(port=world.port)
    if tlsa is not None:
        pin = spki_sha256(world.last_certificate.cert_chain_pems[0].bytes())
        dns_server.records[(name, "TLSA")] = [tlsa.format(pin=pin)]
    if authenticated:
        dns_server.validated.add(name)
    gateway = await world.gateway(config)
    return gateway, receiver


async def test_matching_dane_ee_record_authenticates_a_certificate_for_another_name(
        world: MailWorld, caplog: pytest.LogCaptureFixture) -> None:
    gateway, receiver = await setup(world, tlsa="3 1 1 {pin}", authenticated=True,
                                    tls_name="not-the-mx-name.test")
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-OK"))
        await eventually(lambda: receiver.messages)
        line = await eventually(lambda: next((r.getMessage() for r in caplog.records
                                              if "event=delivery " in r.getMessage()), None))
    assert "/dane" in line and "protection=tls-verified" in line


async def test_mismatching_record_stops_delivery(world: MailWorld) -> None:
    gateway, receiver = await setup(world, tlsa=f"3 1 1 {other_key_sha256()}", authenticated=True)
    await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-BAD"))
    [queue_id] = await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []
    status = gateway.spool.load(queue_id, QueueState.DEFERRED).statuses[0]
    assert status.dsn == "4.7.5" and "does not match its TLSA records" in status.reply


async def test_records_without_the_ad_bit_are_ignored(world: MailWorld,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    gateway, receiver = await setup(world, tlsa=f"3 1 1 {other_key_sha256()}", authenticated=False,
                                    tls_name="someone-else.test")
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-NOAD"))
        await eventually(lambda: receiver.messages)
        line = await eventually(lambda: next((r.getMessage() for r in caplog.records
                                              if "event=delivery " in r.getMessage()), None))
    assert "/unverified" in line  # opportunistic TLS, as without any TLSA record


async def test_protected_recipient_is_delivered_by_dane_without_end_to_end_keys(
        world: MailWorld, tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    gateway, receiver = await setup(world, tlsa="3 1 1 {pin}", authenticated=True, tls_name="other.test",
                                    config={"policies_dir": str(tmp_path / "policies"),
                                            "dlp": {"workers": 0}})
    raw = b.message("SSN 219-45-6789", subject="Results", sender=SENDER, to="pat@dane.test")
    await send(gateway.client(), SENDER, ["pat@dane.test"], raw)
    [received] = await eventually(lambda: receiver.messages)
    assert b"219-45-6789" in received.content  # verified by DANE: no need for S/MIME


async def test_only_unusable_records_still_require_encryption(world: MailWorld) -> None:
    gateway, receiver = await setup(world, tlsa="1 1 1 {pin}", authenticated=True)  # PKIX-EE: unusable
    await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-TA"))
    [received] = await eventually(lambda: receiver.messages)
    assert received.tls_version is not None


@pytest.mark.parametrize(("selector", "mtype"), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
def test_every_selector_and_matching_type(selector: int, mtype: int) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    der = certificate.public_bytes(serialization.Encoding.DER)
    selected = der if selector == 0 else key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = {0: selected, 1: hashlib.sha256(selected).digest(), 2: hashlib.sha512(selected).digest()}[mtype]
    assert TlsaRecord(3, selector, mtype, data).matches(der)
    assert not TlsaRecord(3, selector, mtype, data[:-1] + bytes([data[-1] ^ 1])).matches(der)


async def test_tls_probe_shows_tlsa_records_and_the_match(world: MailWorld) -> None:
    gateway, _ = await setup(world, tlsa="3 1 1 {pin}", authenticated=True)
    report = await probe.probe(gateway.gateway.config, "dane.test")
    [mx] = report["mx"]
    assert len(mx["tlsa"]) == 1 and mx["tlsa"][0].startswith("3 1 1 ") and mx["dane_match"] is True
    assert "the certificate matches" in probe.as_text(report)


async def test_failed_tlsa_lookup_makes_the_host_unusable(world: MailWorld) -> None:
    dns_server = await world.start_dns(RECORDS)
    receiver = await world.sink("127.0.0.25", tls_name="mx.dane.test")
    dns_server.servfail.add(TLSA_NAME.format(port=world.port))  # a validating resolver's answer to a forgery
    gateway = await world.gateway()
    await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-SERVFAIL"))
    [queue_id] = await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []
    assert "TLSA lookup for mx.dane.test failed" in \
        gateway.spool.load(queue_id, QueueState.DEFERRED).statuses[0].reply


async def dane_ta_world(world: MailWorld, *, leaf_name: str,
                        pin_other_ca: bool = False) -> tuple[RunningGateway, Sink]:
    """A receiver whose certificate is issued by an intermediate CA that it sends along; the TLSA
    record (DANE-TA, 2 1 1) pins that intermediate (or, with `pin_other_ca`, an unrelated CA)."""
    dns_server = await world.start_dns(RECORDS)
    intermediate = world.ca.create_child_ca()
    receiver = await world.sink("127.0.0.25", certificate=intermediate.issue_cert(leaf_name))
    pinned = trustme.CA().cert_pem if pin_other_ca else intermediate.cert_pem
    name = TLSA_NAME.format(port=world.port)
    dns_server.records[(name, "TLSA")] = [f"2 1 1 {spki_sha256(pinned.bytes())}"]
    dns_server.validated.add(name)
    return await world.gateway(), receiver


async def test_dane_ta_authenticates_a_chain_to_the_pinned_anchor(world: MailWorld,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    gateway, receiver = await dane_ta_world(world, leaf_name="mx.dane.test")
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-TA-OK"))
        await eventually(lambda: receiver.messages)
        line = await eventually(lambda: next((r.getMessage() for r in caplog.records
                                              if "event=delivery " in r.getMessage()), None))
    assert "/dane" in line


@pytest.mark.parametrize(("leaf_name", "pin_other_ca"), [("mx.dane.test", True), ("elsewhere.test", False)])
async def test_dane_ta_refuses_another_anchor_or_another_name(world: MailWorld, leaf_name: str,
                                                              pin_other_ca: bool) -> None:
    gateway, receiver = await dane_ta_world(world, leaf_name=leaf_name, pin_other_ca=pin_other_ca)
    await send(gateway.client(), SENDER, ["pat@dane.test"], message("DANE-TA-BAD"))
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []
