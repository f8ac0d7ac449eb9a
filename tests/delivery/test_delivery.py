"""End-to-end delivery over loopback: client -> gateway -> DNS -> receiving MX hosts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.spool import QueueState
from tests.conftest import message, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.smtpsink import start_greeting_refuser

TWO_MX = {
    ("clinic.test", "MX"): ["10 mx1.clinic.test.", "20 mx2.clinic.test."],
    ("mx1.clinic.test", "A"): ["127.0.0.11"],
    ("mx2.clinic.test", "A"): ["127.0.0.12"],
}


async def submit(world: MailWorld, gateway: object, recipients: list[str], marker: str,
                 sender: str = SENDER) -> None:
    client = gateway.client()  # type: ignore[attr-defined]
    code, text = await send(client, sender, recipients, message(marker))
    assert code == 250, text
    await client.quit()


async def test_message_goes_to_the_most_preferred_mx(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    first, second = await world.sink("127.0.0.11"), await world.sink("127.0.0.12")
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@clinic.test"], "PREF")
    await eventually(lambda: first.messages)
    assert first.deliveries() == [("pat@clinic.test", "PREF")]
    assert second.messages == []
    await eventually(lambda: not any(gateway.spool.counts().values()))


async def test_second_mx_is_used_when_the_first_refuses_connections(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)  # nothing listens on 127.0.0.11
    second = await world.sink("127.0.0.12")
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@clinic.test"], "FALLBACK")
    await eventually(lambda: second.messages)
    assert second.deliveries() == [("pat@clinic.test", "FALLBACK")]


async def test_a_4xx_greeting_moves_on_to_the_next_mx(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    world.servers.append(await start_greeting_refuser("127.0.0.11", world.port))
    second = await world.sink("127.0.0.12")
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@clinic.test"], "GREETING")
    await eventually(lambda: second.messages)


async def test_domain_without_mx_is_delivered_to_its_address_record(world: MailWorld) -> None:
    await world.start_dns({("implicit.test", "A"): ["127.0.0.13"]})
    sink = await world.sink("127.0.0.13")
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@implicit.test"], "IMPLICIT")
    await eventually(lambda: sink.messages)


async def deliver_over_tls(world: MailWorld, caplog: pytest.LogCaptureFixture, certificate_name: str,
                           marker: str) -> tuple[str | None, str]:
    """Deliver one message to an MX with a certificate for `certificate_name`; returns the TLS
    version the sink saw and the gateway's delivery log line."""
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11", tls_name=certificate_name)
    gateway = await world.gateway()
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await submit(world, gateway, ["pat@clinic.test"], marker)
        await eventually(lambda: sink.messages)
        line = await eventually(lambda: next((r.getMessage() for r in caplog.records
                                              if "event=delivery " in r.getMessage()), None))
    return sink.messages[0].tls_version, line


async def test_starttls_is_used_and_the_verified_certificate_is_logged(
        world: MailWorld, caplog: pytest.LogCaptureFixture) -> None:
    version, line = await deliver_over_tls(world, caplog, "mx1.clinic.test", "TLS")
    assert version in ("TLSv1.2", "TLSv1.3")
    assert "status=sent" in line and "/verified" in line and "relay=mx1.clinic.test[127.0.0.11]" in line


async def test_certificate_for_another_name_still_encrypts_but_is_logged_unverified(
        world: MailWorld, caplog: pytest.LogCaptureFixture) -> None:
    version, line = await deliver_over_tls(world, caplog, "someone-else.test", "UNVERIFIED")
    assert version is not None
    assert "/unverified" in line


async def test_temporary_failure_is_deferred_then_delivered_on_retry(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.data_replies.append("451 4.3.0 Try again later")
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@clinic.test"], "RETRY")
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    await eventually(lambda: sink.messages)
    assert sink.deliveries() == [("pat@clinic.test", "RETRY")]
    assert sink.transactions == 2
    await eventually(lambda: not gateway.queued(QueueState.DEFERRED))
    assert world.dsns() == []


async def test_one_refused_recipient_of_three_gets_one_dsn_and_the_others_one_copy(
        world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    gateway = await world.gateway()
    await submit(world, gateway, ["a@clinic.test", "gone@clinic.test", "b@clinic.test"], "THREE")
    dsns = await eventually(world.dsns)
    assert sorted(sink.deliveries()) == [("a@clinic.test", "THREE"), ("b@clinic.test", "THREE")]
    assert len(dsns) == 1
    report = dsns[0]
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    recipients = [b for b in blocks if b["Final-Recipient"]]
    assert [b["Final-Recipient"] for b in recipients] == ["rfc822; gone@clinic.test"]
    assert recipients[0]["Action"] == "failed" and recipients[0]["Status"] == "5.1.1"
    assert recipients[0]["Remote-MTA"] == "dns; mx1.clinic.test"
    assert "550 5.1.1 No such user here" in recipients[0]["Diagnostic-Code"]
    assert blocks[0]["Reporting-MTA"] == "dns; mailward.test"
    await eventually(lambda: not any(gateway.spool.counts().values()))


async def test_dsn_returns_the_headers_and_never_the_body(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    gateway = await world.gateway()
    client = gateway.client()
    await client.connect()
    await client.ehlo()
    await client.mail(SENDER, options=["RET=FULL", "ENVID=case+2D42"])
    await client.rcpt("gone@clinic.test", options=["NOTIFY=FAILURE", "ORCPT=rfc822;gone@clinic.test"])
    await client.data(message("BODYCHECK"))
    await client.quit()
    report = (await eventually(world.dsns))[0]
    raw = world.sender_sink.messages[0].content  # type: ignore[union-attr]
    assert b"Patient note BODYCHECK" not in raw
    headers = next(p for p in report.walk() if p.get_content_type() == "text/rfc822-headers")
    assert "Message-ID: <BODYCHECK@example.com>" in headers.get_content()
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "case-42"
    assert blocks[1]["Original-Recipient"] == "rfc822; gone@clinic.test"


async def test_null_mx_bounces_at_once(world: MailWorld) -> None:
    dns = await world.start_dns({("nomail.test", "MX"): ["0 ."]})
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@nomail.test"], "NULLMX")
    report = (await eventually(world.dsns))[0]
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    fields = status.get_payload()[1]
    assert fields["Action"] == "failed" and fields["Status"] == "5.1.2"
    assert ("nomail.test", "A") not in dns.queries  # no fallback to an implicit MX


async def test_nonexistent_domain_bounces(world: MailWorld) -> None:
    await world.start_dns({})
    gateway = await world.gateway()
    await submit(world, gateway, ["pat@no-such-domain.test"], "NXDOMAIN")
    report = (await eventually(world.dsns))[0]
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    assert status.get_payload()[1]["Status"] == "5.1.2"


async def test_bounce_of_a_null_sender_message_is_dropped_without_dsn(
        world: MailWorld, caplog: pytest.LogCaptureFixture) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.rcpt_replies["gone@clinic.test"] = "550 5.1.1 No such user here"
    gateway = await world.gateway()
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await submit(world, gateway, ["gone@clinic.test"], "NULLSENDER", sender="")
        await eventually(lambda: any("status=bounced" in r.getMessage() for r in caplog.records))
    await eventually(lambda: not any(gateway.spool.counts().values()))
    assert world.dsns() == []


async def test_452_too_many_recipients_sends_the_rest_in_another_transaction(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.max_rcpts = 2
    gateway = await world.gateway()
    recipients = [f"p{i}@clinic.test" for i in range(5)]
    await submit(world, gateway, recipients, "SPLIT")
    await eventually(lambda: len(sink.deliveries()) == 5)
    assert sorted(r for r, _ in sink.deliveries()) == recipients
    assert [len(m.recipients) for m in sink.messages] == [2, 2, 1]
    assert sink.connections == 1


async def test_server_that_hangs_is_timed_out_and_the_message_retried(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.hang_data = True
    gateway = await world.gateway(data_timeout="1s")
    await submit(world, gateway, ["pat@clinic.test"], "HANG")
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    sink.hang_data = False
    await eventually(lambda: sink.messages)
    assert sink.deliveries() == [("pat@clinic.test", "HANG")]


async def test_message_past_max_queue_age_bounces_with_a_dsn(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.always_data_reply = "451 4.2.0 Mailbox busy"
    gateway = await world.gateway(max_queue_age="2s", delay_warning=None)
    await submit(world, gateway, ["pat@clinic.test"], "EXPIRE")
    report = (await eventually(world.dsns))[0]
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    fields = status.get_payload()[1]
    assert fields["Action"] == "failed" and fields["Status"] == "4.2.0"
    assert "451 4.2.0 Mailbox busy" in fields["Diagnostic-Code"]
    await eventually(lambda: not any(gateway.spool.counts().values()))


async def test_delay_warning_is_sent_once_while_retries_go_on(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.always_data_reply = "451 4.2.0 Mailbox busy"
    gateway = await world.gateway(delay_warning="1s")
    await submit(world, gateway, ["pat@clinic.test"], "DELAY")
    await eventually(world.dsns)
    await eventually(lambda: sink.transactions >= 4)
    dsns = world.dsns()
    assert len(dsns) == 1, [str(d.get_payload()[1]) for d in dsns]
    status = next(p for p in dsns[0].walk() if p.get_content_type() == "message/delivery-status")
    fields = status.get_payload()[1]
    assert fields["Action"] == "delayed" and fields["Will-Retry-Until"]
    queue_id = status.get_payload()[0]["X-Mailward-Queue-ID"]
    # Still queued for more attempts (a lookup may miss it mid-move, hence the polling).
    await eventually(lambda: gateway.spool.locate(queue_id) in (QueueState.DEFERRED, QueueState.ACTIVE))


async def test_one_connection_carries_several_messages(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    gateway = await world.gateway()
    for n in range(4):
        await submit(world, gateway, ["pat@clinic.test"], f"REUSE{n}")
        await eventually(lambda n=n: len(sink.messages) == n + 1)
    assert sink.connections == 1


async def test_notify_success_gets_a_relayed_report_when_the_next_hop_cannot_report(
        world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")  # does not advertise DSN
    gateway = await world.gateway()
    client = gateway.client()
    await client.connect()
    await client.ehlo()
    await client.mail(SENDER)
    await client.rcpt("pat@clinic.test", options=["NOTIFY=SUCCESS,FAILURE"])
    await client.data(message("SUCCESS"))
    await client.quit()
    report = (await eventually(world.dsns))[0]
    assert sink.deliveries() == [("pat@clinic.test", "SUCCESS")]
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    fields = status.get_payload()[1]
    assert fields["Action"] == "relayed" and fields["Status"] == "2.0.0"


async def test_log_lines_say_connection_refused_and_what_protection_was_required(
        world: MailWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await world.start_dns({("clinic.test", "MX"): ["10 mx.clinic.test."],
                           ("mx.clinic.test", "A"): ["127.0.0.11"],
                           ("plain.test", "MX"): ["10 mx.plain.test."],
                           ("mx.plain.test", "A"): ["127.0.0.12"]})
    await world.sink("127.0.0.12")  # no STARTTLS; nothing listens on 127.0.0.11
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\nrules: [{name: phi, action: encrypt, protection: [tls],\n"
        "                 when: {detectors: {ssn: 1}}}]\n")
    gateway = await world.gateway({"policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0}},
                                  retry_schedule=["1h"])
    await submit(world, gateway, ["pat@clinic.test"], "REFUSED")
    code, _ = await send(gateway.client(), SENDER, ["pat@plain.test"], message("PHI SSN 219-45-6789"))
    assert code == 250
    await eventually(lambda: len(gateway.queued(QueueState.DEFERRED)) == 2)
    refused = next(r.getMessage() for r in caplog.records if "to=<pat@clinic.test>" in r.getMessage())
    assert "connection refused" in refused and "SMTPConnectError" not in refused
    protected = next(r.getMessage() for r in caplog.records if "to=<pat@plain.test>" in r.getMessage())
    assert "required=tls" in protected and "protection=none" in protected
    assert "nothing was sent" in protected
