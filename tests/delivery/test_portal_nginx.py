"""docs/portal-nginx.md, tried as written: Debian's nginx terminates TLS in front of the portal,
which then marks itself secure (HSTS, Secure cookies) and serves the recipient's link."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.conftest import free_port, send
from tests.delivery.conftest import MailWorld
from tests.delivery.portal_world import DOCTOR, MARKER, PATIENT, start_portal_world
from tests.polling import eventually
from tests.postfix import wait_listening
from tests.stages.dlp import builders as b

DOCS = Path(__file__).resolve().parent.parent.parent / "docs" / "portal-nginx.md"


def docs_server_block(listen_port: int, portal_port: int, cert: Path, key: Path) -> str:
    """The first server block of the doc, on a test port with the test certificate."""
    text = DOCS.read_text()
    block = re.search(r"```nginx\n(server \{.*?\n\})\nserver \{", text, re.S)
    assert block is not None
    server = block.group(1)
    server = server.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{listen_port} ssl http2;")
    server = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", server)
    server = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", server)
    return server.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{portal_port}")


async def test_the_portal_behind_nginx_is_served_over_https_with_hsts(
        world: MailWorld, tmp_path: Path, ca: trustme.CA) -> None:
    if shutil.which("nginx") is None:
        pytest.fail("nginx is missing: scripts/test installs Debian's nginx package")
    nginx_port = free_port()
    portal = await start_portal_world(world, tmp_path, base_url=f"https://127.0.0.1:{nginx_port}",
                                      trusted_proxies=["127.0.0.1/32"])
    portal_port = int(portal.base.rsplit(":", 1)[1])
    holder = tempfile.TemporaryDirectory(prefix="mailward-nginx-")
    prefix = Path(holder.name)
    leaf = ca.issue_cert("secure.example.com", "127.0.0.1")
    cert, key = prefix / "portal.crt", prefix / "portal.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    conf = prefix / "nginx.conf"
    conf.write_text(f"daemon off;\nuser root;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
                    f"events {{}}\nhttp {{\n  client_body_temp_path {prefix}/body;\n"
                    f"  proxy_temp_path {prefix}/proxy;\n"
                    + docs_server_block(nginx_port, portal_port, cert, key) + "\n}\n")
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(nginx_port)
        original = b.message(f"Your results, SSN {MARKER}", subject="Results", sender=DOCTOR, to=PATIENT)
        assert (await send(portal.gateway.client(), DOCTOR, [PATIENT], original))[0] == 250
        notice = await eventually(lambda: portal.patient.messages)
        link = re.search(rb"https://127\.0\.0\.1:\d+/m/[A-Za-z0-9_-]+", notice[0].content)
        assert link is not None
        context = ssl.create_default_context(cafile=None)
        ca.configure_trust(context)
        async with aiohttp.ClientSession() as client:
            async with client.get(f"https://127.0.0.1:{nginx_port}/healthz", ssl=context) as health:
                assert health.status == 200 and await health.text() == "ok"
            async with client.get(link.group(0).decode(), ssl=context) as page:
                assert page.status == 200
                assert "max-age" in page.headers.get("Strict-Transport-Security", "")
                assert "passcode" in (await page.text()).lower()
        # A visitor from another address: the audit names it, not the proxy (portal.trusted_proxies).
        visitor = aiohttp.TCPConnector(local_addr=("127.0.0.77", 0), ssl=context)
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        async with aiohttp.ClientSession(connector=visitor, cookie_jar=jar) as client:
            async with client.get(link.group(0).decode()) as page:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
            assert csrf is not None
            async with client.post(link.group(0).decode() + "/code", data={"csrf": csrf.group(1)}) as sent:
                assert sent.status == 200
        audit = portal.gateway.gateway.audit.directory
        records = [json.loads(line) for path in sorted(audit.glob("audit-*.jsonl"))
                   for line in path.read_text().splitlines()]
        assert [r["client"] for r in records if r["event"] == "portal_code_sent"] == ["127.0.0.77"]
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        holder.cleanup()
