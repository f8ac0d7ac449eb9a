"""Passcodes: right once, wrong five times locks, expiry, and the send rate limit."""

from __future__ import annotations

from gateway.portal import passcode
from gateway.portal.store import PortalMessage

NOW = 1_800_000_000.0


def record() -> PortalMessage:
    return PortalMessage("a" * 40, "pat@example.org", "dr@clinic.example", NOW, NOW + 86400)


def test_the_issued_code_opens_once() -> None:
    code, issued = passcode.issue(record(), NOW)
    assert len(code) == 6 and code.isdigit() and code not in issued.code_hash
    check = passcode.verify(issued, code, NOW + 1)
    assert check.ok and check.record.viewed == NOW + 1
    assert passcode.verify(check.record, code, NOW + 2).reason == "none"  # used up


def test_five_wrong_codes_lock_the_message() -> None:
    code, current = passcode.issue(record(), NOW)
    wrong = "000000" if code != "000000" else "111111"
    for attempt in range(passcode.MAX_FAILURES):
        check = passcode.verify(current, wrong, NOW + attempt)
        current = check.record
    assert check.reason == "locked" and passcode.locked(current, NOW + 10)
    assert passcode.verify(current, code, NOW + 10).reason == "locked"  # even the right one
    assert not passcode.may_send(current, NOW + 10)
    assert not passcode.locked(current, NOW + passcode.LOCKOUT + 10)


def test_an_expired_code_is_refused() -> None:
    code, issued = passcode.issue(record(), NOW)
    assert passcode.verify(issued, code, NOW + passcode.CODE_TTL + 1).reason == "expired"


def test_codes_are_rate_limited_per_message() -> None:
    current = record()
    for i in range(passcode.MAX_SENDS):
        assert passcode.may_send(current, NOW + i)
        _, current = passcode.issue(current, NOW + i)
    assert not passcode.may_send(current, NOW + 10)
    assert passcode.may_send(current, NOW + passcode.SEND_WINDOW + 10)
