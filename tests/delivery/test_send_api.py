"""The HTTP sending API over real HTTP on loopback, delivering to a test MX: structured and raw
submissions, substitutions per recipient (HTML-escaped), attachments byte-identical, DKIM valid;
an idempotent retry queues nothing new; a DLP block is a 422 with the rule's text; a suppressed
recipient is reported; scopes, sender domains, the rate limit and bad requests are refused."""

from __future__ import annotations

import base64
import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import apitokens
from tests.conftest import RunningGateway, mailward_cli
from tests.delivery.conftest import MailWorld
from tests.dkimverify import mailauth, make_key
from tests.polling import eventually, free_port
from tests.smtpsink import Sink

RECORDS = {("clinic.test", "MX"): ["10 mx.clinic.test."], ("mx.clinic.test", "A"): ["127.0.0.21"]}
SENDER = "reminders@hospital.test"
TO = [{"address": "p@clinic.test"}]


class Api:
    def __init__(self, world: MailWorld, gateway: RunningGateway, sink: Sink, port: int,
                 tokens: dict[str, str]) -> None:
        self.world, self.gateway, self.sink, self.port, self.tokens = world, gateway, sink, port, tokens

    async def post(self, body: Any, token: str = "sender",
                   raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else json.dumps(body).encode()
        async with aiohttp.ClientSession() as client, client.post(
                f"http://127.0.0.1:{self.port}/api/v1/messages", data=data,
                headers={"Authorization": f"Bearer {self.tokens[token]}",
                         "Content-Type": "application/json"}) as answer:
            return answer.status, await answer.json()


async def start(world: MailWorld, tmp_path: Path, policy: str | None = None, **api: Any) -> Api:
    key = make_key(tmp_path, "hospital.test", "api")
    await world.start_dns({**RECORDS, **dict([key.dns])})
    sink = await world.sink("127.0.0.21")
    path = tmp_path / "api-tokens"
    tokens = {"sender": apitokens.add(path, "ehr", ["send", "status"], ["hospital.test"], []),
              "status": apitokens.add(path, "monitor", ["status"], [], [])}
    port = free_port()
    config: dict[str, Any] = {"api": {"listen": f"127.0.0.1:{port}", "tokens_file": str(path),
                                      "state_dir": str(tmp_path / "api"), **api},
                              "domains": {"hospital.test": {"dkim": [key.config]}}}
    if policy is not None:
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "p.yaml").write_text(policy)
        config.update({"policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0}})
    gateway = await world.gateway(config)
    return Api(world, gateway, sink, port, tokens)


def parse(content: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def test_a_structured_request_is_delivered_per_recipient_with_its_substitutions(
        world: MailWorld, tmp_path: Path) -> None:
    api = await start(world, tmp_path)
    pdf = b"%PDF-1.4 appointment card\n" + bytes(range(256))
    status, answer = await api.post({
        "from": f"Riverside Clinic <{SENDER}>", "subject": "Your visit on {{day}}",
        "text": "Dear {{name}}, see you on {{day}}.",
        "html": "<p>Dear {{name}}, see you on <b>{{day}}</b>.</p>",
        "attachments": [{"name": "card.pdf", "type": "application/pdf",
                         "data": base64.b64encode(pdf).decode()}],
        "recipients": [
            {"address": "ann@clinic.test", "substitutions": {"name": "Ann <O'Neil>", "day": "Monday"}},
            {"address": "bob@clinic.test", "substitutions": {"name": "Bob", "day": "Tuesday"}}]})
    assert status == 200, answer
    assert [r["recipient"] for r in answer["results"]] == ["ann@clinic.test", "bob@clinic.test"]
    assert all("queue_id" in r for r in answer["results"])
    await eventually(lambda: len(api.sink.messages) == 2, timeout=20)
    by_rcpt = {m.recipients[0]: m for m in api.sink.messages}
    ann = parse(by_rcpt["ann@clinic.test"].content)
    assert ann["Subject"] == "Your visit on Monday"
    assert ann.get_body(("plain",)).get_content().strip() == "Dear Ann <O'Neil>, see you on Monday."
    assert "Dear Ann &lt;O&#x27;Neil&gt;" in ann.get_body(("html",)).get_content()  # escaped in HTML
    [attachment] = list(ann.iter_attachments())
    assert attachment.get_payload(decode=True) == pdf
    results = await mailauth(by_rcpt["bob@clinic.test"].content, world.dns_port, tmp_path)
    assert [(r["domain"], r["result"]) for r in results] == [("hospital.test", "pass")]
    received = [json.loads(line) for path in api.gateway.gateway.audit.directory.glob("audit-*.jsonl")
                for line in path.read_text().splitlines()]
    assert {(r["via"], r["token"]) for r in received if r["event"] == "received"} == {("api", "ehr")}


async def test_a_raw_message_is_accepted_as_it_is(world: MailWorld, tmp_path: Path) -> None:
    api = await start(world, tmp_path)
    raw = (f"From: {SENDER}\r\nTo: pat@clinic.test\r\nSubject: raw one\r\n\r\nHello as written.\r\n").encode()
    status, answer = await api.post({"content": base64.b64encode(raw).decode(), "content_encoding": "base64",
                                     "recipients": [{"address": "pat@clinic.test"}]})
    assert status == 200, answer
    [received] = await eventually(lambda: api.sink.messages, timeout=20)
    assert b"Hello as written." in received.content and received.sender == SENDER


async def test_a_retried_request_with_its_key_queues_nothing_new(world: MailWorld, tmp_path: Path) -> None:
    api = await start(world, tmp_path)
    body = {"from": SENDER, "subject": "Reminder", "text": "Hello {{name}}", "idempotency_key": "batch-7",
            "recipients": [{"address": "pat@clinic.test", "substitutions": {"name": "Pat"}}]}
    first = await api.post(body)
    again = await api.post(body)
    assert first == again and first[0] == 200
    changed = await api.post({**body, "text": "Something else"})
    assert changed[0] == 409
    await eventually(lambda: api.sink.messages, timeout=20)
    await eventually(lambda: not any(api.gateway.spool.counts().values()))
    assert len(api.sink.messages) == 1


async def test_a_dlp_block_is_a_422_with_the_rules_text(world: MailWorld, tmp_path: Path) -> None:
    policy = ("match: first\nprotect: sensitive\nrules:\n  - name: no-ssn\n    when: {detectors: {ssn: 1}}\n"
              "    action: block\n    reply: \"Refused: Social Security numbers may not be sent\"\n")
    api = await start(world, tmp_path, policy)
    status, answer = await api.post({"from": SENDER, "subject": "x", "text": "SSN {{ssn}}",
                                     "recipients": [{"address": "pat@clinic.test",
                                                     "substitutions": {"ssn": "219-45-6789"}}]})
    assert status == 422
    assert answer["results"][0]["error"] == "5.7.1 Refused: Social Security numbers may not be sent"
    assert api.gateway.queued() == []


async def test_per_recipient_errors_are_reported_beside_the_queued_ones(
        world: MailWorld, tmp_path: Path) -> None:
    api = await start(world, tmp_path)
    config_file = api.gateway.gateway.config.source
    assert config_file is not None
    code, _ = await mailward_cli(config_file, "suppress", "add", "gone@clinic.test")
    assert code == 0
    status, answer = await api.post({"from": SENDER, "subject": "x", "text": "Hi {{name}}",
                                     "recipients": [
                                         {"address": "ok@clinic.test", "substitutions": {"name": "A"}},
                                         {"address": "gone@clinic.test", "substitutions": {"name": "B"}},
                                         {"address": "not an address"}, {"address": "c@clinic.test"}]})
    assert status == 200
    errors = [r.get("error") for r in answer["results"]]
    assert "queue_id" in answer["results"][0]
    assert errors[1].startswith("suppressed") and errors[2] == "invalid address"
    assert errors[3] == "no substitution for {{name}}"


async def test_scope_sender_domain_and_rate_limit(world: MailWorld, tmp_path: Path) -> None:
    api = await start(world, tmp_path, requests_per_minute=3)
    body = {"from": SENDER, "subject": "x", "text": "y", "recipients": TO}
    assert (await api.post(body, token="status"))[0] == 403  # no send scope
    assert (await api.post({**body, "from": "x@elsewhere.test"}))[0] == 403  # not its sender domain
    assert (await api.post(body))[0] == 200
    statuses = [(await api.post(body))[0] for _ in range(3)]
    assert statuses[-1] == 429


@pytest.mark.parametrize(("body", "message"), [
    ({"from": SENDER, "subject": "x", "text": "y", "recipients": TO, "colour": 1},
     "unknown field"),
    ({"from": SENDER, "subject": 7, "text": "y", "recipients": TO}, "subject: expected str"),
    ({"from": SENDER, "subject": "x\r\nBcc: evil@x.test", "text": "y", "recipients": TO},
     "CR and LF"),
    ({"from": f"{SENDER}\nBcc: evil@x.test", "text": "y", "recipients": TO}, "CR and LF"),
    ({"from": SENDER, "text": "y", "headers": {"X-Note": "a\r\nBcc: e@x.test"},
      "recipients": TO},
     "CR and LF"),
    ({"from": SENDER, "text": "y", "headers": {"Bcc": "e@x.test"}, "recipients": TO},
     "not a header a request may set"),
    ({"from": SENDER, "text": "y", "attachments": [{"name": "a", "data": "***"}],
      "recipients": TO},
     "not valid base64"),
    ({"from": SENDER, "text": "y", "recipients": []}, "at least one"),
])
async def test_bad_requests_are_refused_and_queue_nothing(world: MailWorld, tmp_path: Path,
                                                          body: dict[str, Any], message: str) -> None:
    api = await start(world, tmp_path)
    status, answer = await api.post(body)
    assert status == 400 and message in answer["error"], answer
    assert api.gateway.queued() == []


async def test_malformed_json_and_oversized_bodies_are_4xx(world: MailWorld, tmp_path: Path) -> None:
    api = await start(world, tmp_path, max_request_size="2KB")
    status, answer = await api.post(None, raw=b'{"from": ')
    assert status == 400 and "not JSON" in answer["error"]
    async with aiohttp.ClientSession() as client, client.post(
            f"http://127.0.0.1:{api.port}/api/v1/messages", data=b"x" * 5000,
            headers={"Authorization": f"Bearer {api.tokens['sender']}"}) as answer_big:
        assert answer_big.status == 413
    assert api.gateway.queued() == []
