"""SMTP TLS reporting (RFC 8460): sessions and failures are counted per policy domain, survive a
restart, and a day's report reaches the domain's rua by mail (multipart/report, gzip'd JSON) and
by HTTPS POST."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.spool import QueueState
from gateway.transport.tlsrpt import TlsReportStore, parse_rua
from tests.conftest import message, send
from tests.delivery.conftest import SENDER, MailWorld, parse
from tests.delivery.test_mta_sts import PolicyServer, records, sts
from tests.polling import eventually

TOMORROW = time.time() + 86400


@pytest.fixture
def policy_server(world: MailWorld) -> PolicyServer:
    return PolicyServer(world)


async def failing_world(world: MailWorld, policy_server: PolicyServer, rua: str,
                        tmp_path: Path) -> Any:
    dns_records = {**records(), ("_smtp._tls.sts.test", "TXT"): [f'"v=TLSRPTv1; rua={rua}"']}
    await world.start_dns(dns_records)
    await world.sink("127.0.0.24", tls_name="someone-else.test")  # fails the enforce policy
    await policy_server.start(sts("enforce"))
    gateway = await world.gateway(mta_sts_port=policy_server.port, tls_reports={
        "enabled": True, "dir": str(tmp_path / "tlsrpt"), "organization": "Example Health",
        "contact": "mailto:postmaster@hospital.test"})
    code, _ = await send(gateway.client(), SENDER, ["pat@sts.test"], message("TLSRPT"))
    assert code == 250
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    return gateway


async def test_failures_are_reported_by_mail_to_the_rua(world: MailWorld, policy_server: PolicyServer,
                                                        tmp_path: Path) -> None:
    gateway = await failing_world(world, policy_server, "mailto:tlsrpt@hospital.test", tmp_path)
    reporter = gateway.gateway.delivery.tls_reporter
    assert await reporter.send_due(TOMORROW) == 1
    assert world.sender_sink is not None
    [mail] = await eventually(lambda: [m for m in world.sender_sink.messages
                                       if m.recipients == ["tlsrpt@hospital.test"]])
    report_mail = parse(mail.content)
    assert report_mail.get_content_type() == "multipart/report"
    assert report_mail.get_param("report-type") == "tlsrpt"
    assert report_mail["TLS-Report-Domain"] == "sts.test"
    attachment = next(p for p in report_mail.iter_attachments())
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    assert report["organization-name"] == "Example Health"
    [policy] = report["policies"]
    assert policy["policy"]["policy-type"] == "sts" and policy["policy"]["policy-domain"] == "sts.test"
    assert "mode: enforce" in policy["policy"]["policy-string"]
    [failure] = policy["failure-details"]
    assert failure["result-type"] == "certificate-host-mismatch"
    assert failure["receiving-mx-hostname"] == "mx.sts.test" and failure["receiving-ip"] == "127.0.0.24"
    assert policy["summary"]["total-failure-session-count"] == failure["failed-session-count"] >= 1
    assert list((tmp_path / "tlsrpt").glob("*.json")) == []  # a reported day is forgotten


async def test_reports_are_posted_to_an_https_rua(world: MailWorld, policy_server: PolicyServer,
                                                  tmp_path: Path) -> None:
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/tlsrpt+gzip"
        received.append(await request.read())
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/tlsrpt", collect)
    _, port = await world.https("127.0.0.31", "reports.sts.test", app)
    rua = f"https://reports.sts.test:{port}/tlsrpt"
    gateway = await failing_world(world, policy_server, rua, tmp_path)
    assert world.dns_server is not None
    world.dns_server.records[("reports.sts.test", "A")] = ["127.0.0.31"]
    assert await gateway.gateway.delivery.tls_reporter.send_due(TOMORROW) == 1
    [body] = received
    report = json.loads(gzip.decompress(body))
    assert report["policies"][0]["failure-details"][0]["result-type"] == "certificate-host-mismatch"


def test_counts_survive_a_restart(tmp_path: Path) -> None:
    store = TlsReportStore(tmp_path)
    store.record("a.test", "no-policy-found", [], "mx.a.test", "192.0.2.1", None)
    store.record("a.test", "no-policy-found", [], "mx.a.test", "192.0.2.1", "starttls-not-supported")
    store.flush()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    report = TlsReportStore(tmp_path).report(day, "a.test", organization="o", contact="c")
    assert report["policies"][0]["summary"] == {"total-successful-session-count": 1,
                                                "total-failure-session-count": 1}


@pytest.mark.parametrize(("records", "expected"), [
    (["v=TLSRPTv1; rua=mailto:a@x.test,https://r.x.test/p"], ["mailto:a@x.test", "https://r.x.test/p"]),
    (["v=TLSRPTv1;rua=mailto:a@x.test", "v=TLSRPTv1;rua=mailto:b@x.test"], []),  # ambiguous
    (["v=spf1 -all"], []),
    (["v=TLSRPTv1; rua=ftp://x.test"], []),
])
def test_rua_is_read_from_exactly_one_record(records: list[str], expected: list[str]) -> None:
    assert parse_rua(records) == expected
