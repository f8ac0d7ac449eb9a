"""Capture mode (delivery.capture_dir, on in the embedded defaults): a message goes through DLP,
protection and DKIM and is written as an .eml instead of being sent, with a log line naming the
file; no DNS is asked and nothing leaves the machine."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.config import load_config
from tests.conftest import send
from tests.delivery.conftest import SENDER, MailWorld
from tests.dkimverify import mailauth, make_key
from tests.polling import eventually
from tests.stages.dlp import builders as b


def test_the_embedded_defaults_capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None).delivery.capture_dir == tmp_path / "var" / "capture"


async def test_a_captured_message_is_signed_and_written_not_sent(
        world: MailWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key = make_key(tmp_path, "hospital.test", "s1")
    await world.start_dns(dict([key.dns]))  # for the verifier only: capture asks no DNS
    capture = tmp_path / "capture"
    gateway = await world.gateway({"domains": {"hospital.test": {"dkim": [key.config]}}},
                                  capture_dir=str(capture), nameservers=["127.0.0.1:9"])
    code, text = await send(gateway.client(), SENDER, ["b@example.org"],
                            b.message("hello", sender=SENDER, to="b@example.org"))
    assert code == 250
    queue_id = text.split()[-1]
    [eml] = await eventually(lambda: list(capture.glob("*.eml")))
    content = eml.read_bytes()
    assert content.startswith(f"X-Mailward-Capture: from=<{SENDER}> to=<b@example.org>\r\n".encode())
    assert eml.stat().st_mode & 0o777 == 0o600
    assert [(r["domain"], r["result"]) for r in await mailauth(content, world.dns_port, tmp_path)] == \
        [("hospital.test", "pass")]
    assert f"event=captured queue_id={queue_id} file={eml}" in caplog.text
    await eventually(lambda: not any(gateway.spool.counts().values()))
    directory = gateway.gateway.audit.directory
    assert directory is not None
    records = [json.loads(line) for path in directory.glob("audit-*.jsonl")
               for line in path.read_text().splitlines()]
    [delivered] = [r for r in records if r["event"] == "delivered"]
    assert delivered["protection"] == "captured"
