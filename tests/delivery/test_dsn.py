"""DSN construction (RFC 3464) as pure functions: what is returned, and to whom."""

from __future__ import annotations

from gateway.delivery import dsn
from gateway.message import ClientInfo, Envelope, QueuedMessage, Recipient
from tests.delivery.conftest import parse


def queued(sender: str = "dr@hospital.test", *recipients: Recipient) -> QueuedMessage:
    return QueuedMessage("0123456789ABC0D0E0F", 1_700_000_000.0,
                         Envelope(sender, recipients or (Recipient("p@clinic.test"),)),
                         ClientInfo("127.0.0.1", "client.test", "test"), 100)


def test_original_headers_stop_at_the_blank_line() -> None:
    content = b"Subject: x\r\nTo: p@clinic.test\r\n folded\r\n\r\nSSN 123-45-6789\r\n"
    assert dsn.original_headers(content) == b"Subject: x\r\nTo: p@clinic.test\r\n folded\r\n"


def test_a_message_without_headers_returns_no_body_lines() -> None:
    assert dsn.original_headers(b"Patient SSN 123-45-6789\r\nmore\r\n") == b""
    assert dsn.original_headers(b" indented body line\r\n") == b""


def test_notify_decides_which_reports_are_wanted() -> None:
    message = queued()
    assert dsn.wanted(message, Recipient("p@x"), "failed")
    assert dsn.wanted(message, Recipient("p@x"), "delayed")
    assert not dsn.wanted(message, Recipient("p@x"), "relayed")
    assert not dsn.wanted(message, Recipient("p@x", notify=("NEVER",)), "failed")
    assert dsn.wanted(message, Recipient("p@x", notify=("SUCCESS",)), "relayed")
    assert not dsn.wanted(message, Recipient("p@x", notify=("SUCCESS",)), "failed")


def test_null_sender_never_gets_a_report() -> None:
    assert not dsn.wanted(queued(""), Recipient("p@x"), "failed")


def test_report_parses_back_as_multipart_report() -> None:
    recipient = Recipient("p@clinic.test", orcpt="rfc822;p+x@clinic.test")
    content = dsn.build(hostname="mailward.test", message=queued("dr@hospital.test", recipient),
                        headers=b"Subject: hello\r\n", now=1_700_000_100.0,
                        entries=[dsn.DsnRecipient(recipient, "failed", "5.1.1", "550 5.1.1 unknown",
                                                  "mx.clinic.test", 1_700_000_100.0)])
    report = parse(content)
    assert report.get_content_type() == "multipart/report"
    assert report["To"] == "dr@hospital.test" and report["Auto-Submitted"] == "auto-replied"
    kinds = [part.get_content_type() for part in report.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    fields = report.get_payload()[1].get_payload()[1]
    assert fields["Original-Recipient"] == "rfc822; p+x@clinic.test"
    assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 unknown"


def test_xtext_round_trips_what_the_envelope_keeps_decoded() -> None:
    from gateway.message import decode_xtext, encode_xtext

    for text in ("case-42", "a+b=c d", "rfc822;p+x@clinic.test"):
        encoded = encode_xtext(text)
        assert all("!" <= c <= "~" for c in encoded) and "=" not in encoded
        assert decode_xtext(encoded) == text
    assert encode_xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert encode_xtext("ü") == "+C3+BC"
