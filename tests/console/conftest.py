"""A gateway with the compliance console on, a DLP rule that holds mail carrying an SSN, a test
MX behind it, and a browser-like HTTP client that signs in with a password and TOTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest

from tests.conftest import RunningGateway, free_port, mailward_ok, send
from tests.delivery.conftest import SENDER, MailWorld, world  # noqa: F401  # the fixture, shared
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
PASSWORD = "correct horse battery staple"
MARKER = "219-45-6789"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


@dataclass
class Console:
    gateway: RunningGateway
    sink: Sink
    base: str
    config_file: Path
    secrets: dict[str, str] = field(default_factory=dict)  # user -> TOTP secret, once enrolled

    async def add_user(self, name: str, role: str) -> None:
        password_file = self.config_file.parent / f"{name}.password"
        password_file.write_text(PASSWORD + "\n")
        await mailward_ok(self.config_file, "console", "user", "add", name, "--role", role,
                          "--password-file", str(password_file))

    async def sign_in(self, browser: aiohttp.ClientSession, name: str, *, code: str | None = None,
                      password: str = PASSWORD) -> aiohttp.ClientResponse:
        """Password, then the TOTP code (enrolling at the first sign-in); the final response."""
        page = await (await browser.get(f"{self.base}/login")).text()
        response = await browser.post(f"{self.base}/login", data={"csrf": csrf_of(page), "name": name,
                                                                   "password": password})
        if not response.url.path.endswith("/login/code"):
            return response
        page = await response.text()
        enrolling = re.search(r'id="totp-secret">([A-Z2-7]+)<', page)
        if enrolling:
            self.secrets[name] = enrolling.group(1)
        given = code if code is not None else pyotp.TOTP(self.secrets[name]).now()
        return await browser.post(f"{self.base}/login/code", data={"csrf": csrf_of(page), "code": given})

    async def hold(self, subject: str = "Results") -> str:
        """A message the DLP rule holds; its queue id."""
        content = b.message(f"SSN {MARKER}", subject=subject, sender=SENDER, to="dr@clinic.test")
        code, text = await send(self.gateway.client(), SENDER, ["dr@clinic.test"], content)
        assert code == 250, text
        return text.split()[-1]


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
async def console(world: MailWorld, tmp_path: Path) -> AsyncIterator[Console]:  # noqa: F811
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21", tls_name="mx.clinic.test")  # verified TLS: PHI may go
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "hold.yaml").write_text(
        "match: first\nrules: [{name: ssn-review, action: hold, when: {detectors: {ssn: 1}}}]\n")
    port = free_port()
    config: dict[str, Any] = {"policies_dir": str(policies), "dlp": {"workers": 0},
                              "console": {"listen": f"127.0.0.1:{port}",
                                          "users_file": str(tmp_path / "console-users.json")}}
    gateway = await world.gateway(config)
    source = gateway.gateway.config.source
    assert source is not None
    yield Console(gateway, sink, f"http://127.0.0.1:{port}", source)
