"""Suppression and list hygiene: a hard bounce suppresses and the next message is not tried; a
reputation block does not; a one-click POST and a mailto: request unsubscribe; an ARF complaint
suppresses and counts."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import re
from pathlib import Path

import aiohttp

from gateway import metrics
from gateway.spool import QueueState
from tests.conftest import RunningGateway, free_port, mailward_ok, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.smtpsink import Sink
from tests.stages.dlp import builders as b

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}


async def submit(gateway: RunningGateway, to: str, sender: str = SENDER, body: str = "note") -> None:
    code, text = await send(gateway.client(), sender, [to], b.message(body, sender=sender, to=to))
    assert code == 250, text



async def test_a_bad_mailbox_is_suppressed_and_not_tried_again(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    sink.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    gateway = await world.gateway()
    await submit(gateway, "gone@clinic.test")
    await eventually(lambda: len(world.dsns()) == 1)
    config_file = gateway.gateway.config.source
    assert config_file is not None
    listed = json.loads(await mailward_ok(config_file, "suppress", "list", "--json"))
    assert [(e["address"], e["scope"], e["reason"]) for e in listed] == [
        ("gone@clinic.test", "hospital.test", "bounce")]

    await submit(gateway, "gone@clinic.test")
    await eventually(lambda: len(world.dsns()) == 2)
    assert sink.rcpt_seen.count("gone@clinic.test") == 1  # not attempted the second time
    assert "suppression list" in str(world.dsns()[-1])

    await mailward_ok(config_file, "suppress", "remove", "gone@clinic.test")
    await submit(gateway, "gone@clinic.test")
    await eventually(lambda: sink.rcpt_seen.count("gone@clinic.test") == 2)


async def test_a_reputation_block_defers_and_moves_to_another_ip_never_suppresses(world: MailWorld) -> None:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    sink.data_replies.append("550 5.7.1 Service unavailable, sending IP 127.0.0.10 has low reputation")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    gateway = await world.gateway(
        pools={"p": {"ips": [{"address": "127.0.0.10", "ehlo": "w.mailward.test", "warmup": "ramp",
                              "warmup_start": today, "weight": 1000},
                             {"address": "127.0.0.11", "ehlo": "warm.mailward.test"}]}},
        warmup={"ramp": {"per_day": [1000]}})
    await submit(gateway, "pat@clinic.test")
    [delivered] = await eventually(lambda: sink.messages)
    assert delivered.peer == "127.0.0.11"  # the warming IP's budget for this provider is spent
    assert sink.transactions == 2 and world.dsns() == []
    config_file = gateway.gateway.config.source
    assert config_file is not None
    assert json.loads(await mailward_ok(config_file, "suppress", "list", "--json")) == []


async def marketing_gateway(world: MailWorld, tmp_path: Path) -> tuple[RunningGateway, Sink]:
    await world.start_dns(RECORDS)
    sink = await world.sink("127.0.0.21")
    port = free_port()
    gateway = await world.gateway(
        {"portal": {"enabled": True, "listen": f"127.0.0.1:{port}", "base_url": f"http://127.0.0.1:{port}",
                    "store_dir": str(tmp_path / "portal"), "key_file": str(tmp_path / "portal.key")},
         "relay": {"networks": ["127.0.0.1/32"], "users_file": "var/users.yaml",
                   "sender_domains": ["hospital.test"]},
         "feedback": {"fbl_address": "fbl@mailward.test", "key_file": str(tmp_path / "unsub.key")}},
        pools={"news": {"stream": "marketing",
                        "ips": [{"address": "127.0.0.10", "ehlo": "n1.mailward.test"}]}})
    return gateway, sink


async def test_one_click_post_unsubscribes(world: MailWorld, tmp_path: Path) -> None:
    gateway, sink = await marketing_gateway(world, tmp_path)
    await submit(gateway, "pat@clinic.test")
    [received] = await eventually(lambda: sink.messages)
    parsed = email.message_from_bytes(received.content, policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(http://[^>]+)>", str(parsed["List-Unsubscribe"]))
    assert url is not None and "mailto:unsubscribe+" in str(parsed["List-Unsubscribe"])
    before = metrics.SUPPRESSED.labels("unsubscribe")._value.get()
    async with aiohttp.ClientSession() as client:
        async with client.get(url.group(1)) as page:  # a GET only asks
            assert page.status == 200 and "Unsubscribe" in await page.text()
        assert metrics.SUPPRESSED.labels("unsubscribe")._value.get() == before
        async with client.post(url.group(1), data={"List-Unsubscribe": "One-Click"}) as done:
            assert done.status == 200
        async with client.post(url.group(1)[:-3] + "AAA", data={"List-Unsubscribe": "One-Click"}) as forged:
            assert forged.status == 404
    assert metrics.SUPPRESSED.labels("unsubscribe")._value.get() == before + 1
    await submit(gateway, "pat@clinic.test")
    await eventually(lambda: len(world.dsns()) == 1)  # dropped, and the sender is told
    assert sink.rcpt_seen.count("pat@clinic.test") == 1


async def test_a_mailto_unsubscribe_from_the_recipient_is_honoured(world: MailWorld, tmp_path: Path) -> None:
    gateway, sink = await marketing_gateway(world, tmp_path)
    await submit(gateway, "pat@clinic.test")
    [received] = await eventually(lambda: sink.messages)
    mailto = re.search(rb"mailto:(unsubscribe\+[^?>]+)", received.content)
    assert mailto is not None
    request = b.message("unsubscribe", sender="pat@clinic.test", to=mailto.group(1).decode())
    code, _ = await send(gateway.client(), "pat@clinic.test", [mailto.group(1).decode()], request)
    assert code == 250
    await submit(gateway, "pat@clinic.test")
    await eventually(lambda: len(world.dsns()) == 1)
    assert sink.rcpt_seen.count("pat@clinic.test") == 1
    assert not gateway.queued(QueueState.INCOMING)


ARF = """\
From: feedback@provider.test
To: fbl@mailward.test
Subject: Complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b1"

--b1
Content-Type: text/plain

This is an email abuse report.
--b1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Provider-FBL/1.0
Version: 1
Original-Mail-From: <news@hospital.test>
Original-Rcpt-To: <angry@clinic.test>
Source-IP: 127.0.0.10

--b1
Content-Type: text/rfc822-headers

From: news@hospital.test
To: angry@clinic.test
Subject: Our newsletter

--b1--
"""


async def test_an_arf_complaint_suppresses_and_is_counted(world: MailWorld, tmp_path: Path) -> None:
    gateway, sink = await marketing_gateway(world, tmp_path)
    before = metrics.COMPLAINTS.labels("news", "hospital.test")._value.get()
    code, text = await send(gateway.client(), "feedback@provider.test", ["fbl@mailward.test"],
                            ARF.replace("\n", "\r\n").encode())
    assert code == 250, text
    assert metrics.COMPLAINTS.labels("news", "hospital.test")._value.get() == before + 1
    await submit(gateway, "angry@clinic.test", sender="news@hospital.test")
    [report] = await eventually(lambda: world.dsns())
    assert "suppression list" in str(report) and "angry@clinic.test" not in sink.rcpt_seen
