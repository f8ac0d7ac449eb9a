"""Key discovery: WKD over HTTPS (test CA), DNS OPENPGPKEY and SMIMEA trusted only with the AD bit,
and a protected recipient encrypted with a discovered key, decrypted by gpg."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gateway.crypto.discovery import KeyDiscovery, dns_key_name, wkd_urls, zbase32
from gateway.resolver import MxResolver
from gateway.transport.peer import tls_contexts
from gateway.typedyaml import HostPort
from tests.conftest import free_port, send
from tests.crypto.keys import GnuPG, smime_identity
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.stages.dlp import builders as b

WKD_HOST = "127.0.0.32"
ADDRESS = "pat@wkd.test"


def test_wkd_hash_is_zbase32_of_sha1_of_the_local_part() -> None:
    # The example of draft-koch-openpgp-webkey-service.
    url = wkd_urls("Joe.Doe@Example.ORG")[0]
    assert url.split("/hu/")[1].startswith("iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")
    assert zbase32(b"\x00") == "yy"


class WkdServer:
    def __init__(self, world: MailWorld) -> None:
        self.world = world
        self.port = free_port(WKD_HOST)
        self.keys: dict[str, bytes] = {}

    async def serve(self, request: web.Request) -> web.Response:
        key = self.keys.get(request.path)
        if key is None:
            return web.Response(status=404)
        return web.Response(body=key, content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.serve)
        await self.world.https(WKD_HOST, "openpgpkey.wkd.test", app, self.port)


@pytest.fixture
def wkd(world: MailWorld) -> WkdServer:
    return WkdServer(world)


def discovery(world: MailWorld, **kwargs: object) -> KeyDiscovery:
    ca_file = world.tmp_path / "disc-ca.pem"
    world.ca.cert_pem.write_to_path(str(ca_file))
    resolver = MxResolver((HostPort(f"127.0.0.53:{world.dns_port}"),), 25, {})
    return KeyDiscovery(resolver, tls_contexts(str(ca_file))[0], **kwargs)  # type: ignore[arg-type]


async def test_wkd_finds_the_key_at_the_advanced_url(world: MailWorld, wkd: WkdServer,
                                                     tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.make_key(ADDRESS)
    await world.start_dns({("openpgpkey.wkd.test", "A"): [WKD_HOST]})
    path = wkd_urls(ADDRESS)[0].split(":443", 1)[1].split("?")[0]
    wkd.keys[path] = gnupg.run("--export", ADDRESS)
    await wkd.start()
    found = await discovery(world, wkd=True, port=wkd.port).find_pgp(ADDRESS)
    assert found is not None and found.fingerprint == gnupg.fingerprint(ADDRESS).lower()


async def test_openpgpkey_counts_only_with_the_ad_bit(world: MailWorld, tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.make_key(ADDRESS, algorithm="future-default")
    name = dns_key_name(ADDRESS, "_openpgpkey")
    key = base64.b64encode(gnupg.run("--export", ADDRESS)).decode()
    dns_server = await world.start_dns({(name, "OPENPGPKEY"): [key]})
    assert await discovery(world, dns=True).find_pgp(ADDRESS) is None
    dns_server.validated.add(name)
    found = await discovery(world, dns=True).find_pgp(ADDRESS)
    assert found is not None and ADDRESS in found.addresses


async def test_smimea_gives_a_checked_certificate(world: MailWorld, tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "smime", ADDRESS)
    name = dns_key_name(ADDRESS, "_smimecert")
    der = identity.certificate.public_bytes(serialization.Encoding.DER).hex()
    dns_server = await world.start_dns({(name, "SMIMEA"): [f"3 0 0 {der}"]})
    dns_server.validated.add(name)
    found = await discovery(world, dns=True).find_smime(ADDRESS)
    assert found is not None and found.certificate == identity.certificate


async def test_protected_recipient_is_encrypted_with_a_wkd_key(world: MailWorld, wkd: WkdServer,
                                                                tmp_path: Path) -> None:
    gnupg = GnuPG(tmp_path / "gnupg")
    gnupg.make_key(ADDRESS)
    await world.start_dns({("wkd.test", "MX"): ["10 mx.wkd.test."], ("mx.wkd.test", "A"): ["127.0.0.27"],
                           ("openpgpkey.wkd.test", "A"): [WKD_HOST]})
    receiver = await world.sink("127.0.0.27")  # no STARTTLS
    wkd.keys[wkd_urls(ADDRESS)[0].split(":443", 1)[1].split("?")[0]] = gnupg.run("--export", ADDRESS)
    await wkd.start()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    gateway = await world.gateway({"policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0},
                                   "keys": {"wkd": True, "wkd_port": wkd.port}})
    raw = b.message("SSN 219-45-6789", subject="Results", sender=SENDER, to=ADDRESS)
    assert (await send(gateway.client(), SENDER, [ADDRESS], raw))[0] == 250
    [received] = await eventually(lambda: receiver.messages)
    assert b"219-45-6789" not in received.content
    payload = received.content.split(b"-----BEGIN PGP MESSAGE-----")[1].split(b"-----END PGP MESSAGE-----")[0]
    decrypted = gnupg.decrypt(b"-----BEGIN PGP MESSAGE-----" + payload.replace(b"\r\n", b"\n")
                              + b"-----END PGP MESSAGE-----\n")
    assert b"219-45-6789" in decrypted
