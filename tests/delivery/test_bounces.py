"""Bounce classification from enhanced status codes and the large receivers' reply texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.reputation.bounces import classify, suppresses
from gateway.state.suppression import LocalSuppression


@pytest.mark.parametrize(("code", "status", "text", "expected"), [
    (550, "5.1.1", "The email account that you tried to reach does not exist.", "bad_mailbox"),
    (550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "bad_mailbox"),
    (550, "5.2.1", "The email account that you tried to reach is disabled.", "bad_mailbox"),
    (552, "5.2.2", "The recipient's inbox is out of storage space.", "mailbox_full"),
    (452, "4.2.2", "The email account that you tried to reach is over quota.", "mailbox_full"),
    (550, "5.7.1", "Our system has detected that this message is likely unsolicited mail.", "policy"),
    (554, "5.7.1", "Service unavailable; Client host blocked using Spamhaus", "policy"),
    (550, "5.7.26", "Unauthenticated email from example.com is not accepted due to DMARC policy", "policy"),
    (421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail", "throttled"),
    (421, "4.7.0", "[TSS04] Messages temporarily deferred due to unexpected volume", "throttled"),
    (451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]", "throttled"),
    (451, "4.3.0", "Try again later", "other"),
    (550, "5.4.4", "Unable to route: no MX", "dns"),
    (451, "4.4.3", "DNS lookup of MX failed (SERVFAIL or timeout)", "dns"),
    (450, "4.7.5", "no protection available: tls: certificate did not verify", "tls"),
    (550, "5.0.0", "Something went wrong", "other"),
])
def test_replies_are_classified(code: int, status: str, text: str, expected: str) -> None:
    assert classify(code, status, text) == expected


def test_only_a_permanent_bad_mailbox_suppresses() -> None:
    assert suppresses(550, "bad_mailbox")
    assert not suppresses(450, "bad_mailbox")
    assert not suppresses(550, "policy")  # a reputation block is about us, not the recipient


def test_the_suppression_list_sees_other_processes_changes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "suppression.sqlite"
    delivery, cli = LocalSuppression(path), LocalSuppression(path)
    assert delivery.find("pat@example.org", "hospital.test") is None  # empty: remembered
    cli.add("pat@example.org", scope="hospital.test", reason="manual")
    assert delivery.find("pat@example.org", "hospital.test") is not None
    assert delivery.find("pat@example.org", "other.test") is None
    cli.remove("pat@example.org")
    assert delivery.find("pat@example.org", "hospital.test") is None
    delivery.add("gone@example.org", reason="bounce")  # global
    assert delivery.find("gone@example.org", "any.test") is not None
