"""The low-severity findings of the outside attack run, each over the real protocol: TLS 1.2
listeners offer no CBC suites, HTTP answers name no software version, /healthz reports a full
spool disk, the status API serves HTTPS with its own certificate, and 8-bit content is declared
BODY=8BITMIME on the way out even when the submitting client did not declare it."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
import trustme

from tests.conftest import client_context, free_port
from tests.delivery.conftest import SENDER, MailWorld, fill
from tests.ingress.test_limits import read_reply
from tests.ingress.test_protocol import session
from tests.polling import eventually

CBC_SUITES = ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:"
              "ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:AES128-SHA")
ROUTES = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.11"]}


def tls12_client(ca: trustme.CA, ciphers: str) -> ssl.SSLContext:
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


async def test_the_smtp_listener_offers_no_cbc_suites_in_tls12(world: MailWorld, ca: trustme.CA) -> None:
    await world.start_dns(ROUTES)
    gateway = await world.gateway()
    refused = gateway.client()
    await refused.connect()
    with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
        await refused.starttls(tls_context=tls12_client(ca, CBC_SUITES))
    refused.close()
    accepted = gateway.client()
    await accepted.connect()
    await accepted.starttls(tls_context=tls12_client(ca, "ECDHE+AESGCM"))
    assert "GCM" in accepted.get_transport_info("ssl_object").cipher()[0]
    await accepted.quit()


async def test_the_status_api_serves_https_with_its_own_certificate_and_no_version_banner(
        world: MailWorld, tmp_path: Path, ca: trustme.CA, tls_files: dict[str, Path]) -> None:
    await world.start_dns(ROUTES)
    tokens = tmp_path / "api-tokens"
    tokens.write_text("tok-" + "y" * 40 + "\n")
    tokens.chmod(0o600)
    port = free_port()
    await world.gateway({"api": {"listen": f"127.0.0.1:{port}", "tokens_file": str(tokens),
                                 "tls_cert_file": str(tls_files["cert_file"]),
                                 "tls_key_file": str(tls_files["key_file"])}})
    headers = {"Authorization": "Bearer tok-" + "y" * 40}
    async with aiohttp.ClientSession() as client:
        async with client.get(f"https://127.0.0.1:{port}/api/v1/queue", headers=headers,
                              ssl=client_context(ca)) as answer:
            assert answer.status == 200 and answer.headers["Server"] == "Mailward"
        async with client.get(f"https://127.0.0.1:{port}/no/such/path", headers=headers,
                              ssl=client_context(ca)) as missing:
            assert missing.status == 404 and missing.headers["Server"] == "Mailward"
        with pytest.raises(aiohttp.ClientConnectorError):  # TLS 1.2 with CBC: no handshake
            async with client.get(f"https://127.0.0.1:{port}/api/v1/queue", headers=headers,
                                  ssl=tls12_client(ca, CBC_SUITES)):
                pass


async def test_healthz_is_unhealthy_when_the_spool_disk_is_nearly_full(
        world: MailWorld, small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("2m")
    await world.start_dns(ROUTES)
    port = free_port()
    await world.gateway({"metrics": {"listen": f"127.0.0.1:{port}"},
                         "spool": {"dir": str(disk / "spool"), "min_free": "1MB"}})

    async def health() -> tuple[int, str]:
        url = f"http://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as client, client.get(url) as answer:
            return answer.status, await answer.text()

    assert (await health())[0] == 200
    filler = fill(disk)
    status, text = await health()
    assert status == 503 and "below spool.min_free" in text
    filler.unlink()
    assert (await health())[0] == 200


async def test_eight_bit_content_is_declared_8bitmime_even_when_the_client_did_not(world: MailWorld) -> None:
    await world.start_dns(ROUTES)
    clinic = await world.sink("127.0.0.11")
    gateway = await world.gateway()
    content = ("From: Dr. Müller <dr@hospital.test>\r\nTo: pat@clinic.test\r\nSubject: Grüße\r\n\r\n"
               "Befund für Zoë\r\n").encode()
    reader, writer = await session(gateway)
    writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<pat@clinic.test>\r\nDATA\r\n".encode())  # no BODY=
    for _ in range(3):
        await read_reply(reader)
    writer.write(content + b".\r\n")
    assert (await read_reply(reader)).startswith(b"250 ")
    writer.close()
    await eventually(lambda: clinic.messages)
    assert "BODY=8BITMIME" in clinic.messages[0].mail_options
    assert "Grüße".encode() in clinic.messages[0].content
