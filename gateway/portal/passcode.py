"""One-time passcodes that prove a portal visitor reads the recipient's mailbox.

A code is 6 digits, valid `CODE_TTL`, stored only as a salted SHA-256 (inside the sealed portal
record) and compared in constant time. `MAX_FAILURES` wrong codes in a row lock the message for
`LOCKOUT`; at most `MAX_SENDS` codes are sent per `SEND_WINDOW`, so the link cannot be used to
flood a mailbox. Pure functions over `PortalMessage`; the caller stores the result, loading and
storing under one lock per message so that parallel attempts are each counted (see `web`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from gateway.portal.store import PortalMessage

CODE_TTL = 600.0
MAX_FAILURES = 5
LOCKOUT = 900.0
MAX_SENDS = 3
SEND_WINDOW = 900.0


@dataclass(frozen=True)
class Check:
    ok: bool
    record: PortalMessage
    reason: str = ""  # wrong, expired, locked, none


def _hash(salt: str, code: str) -> str:
    return salt + ":" + hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()


def locked(record: PortalMessage, now: float | None = None) -> bool:
    return record.locked_until > (now or time.time())


def may_send(record: PortalMessage, now: float | None = None) -> bool:
    now = now or time.time()
    return not locked(record, now) and sum(1 for t in record.codes_sent if now - t < SEND_WINDOW) < MAX_SENDS


def issue(record: PortalMessage, now: float | None = None) -> tuple[str, PortalMessage]:
    """A new code (to mail to the recipient) and the record that remembers its hash."""
    now = now or time.time()
    code = f"{secrets.randbelow(10**6):06d}"
    recent = [t for t in record.codes_sent if now - t < SEND_WINDOW]
    return code, dataclasses.replace(record, code_hash=_hash(secrets.token_hex(8), code),
                                     code_expires=now + CODE_TTL, codes_sent=[*recent, now])


def verify(record: PortalMessage, code: str, now: float | None = None) -> Check:
    now = now or time.time()
    if locked(record, now):
        return Check(False, record, "locked")
    if not record.code_hash:
        return Check(False, record, "none")
    if record.code_expires <= now:
        return Check(False, dataclasses.replace(record, code_hash=""), "expired")
    salt = record.code_hash.partition(":")[0]
    if hmac.compare_digest(_hash(salt, code.strip()), record.code_hash):
        # Consumed: the caller stores this record before it answers, so the code works once.
        return Check(True, dataclasses.replace(record, code_hash="", failed_codes=0, viewed=now))
    failed = count_failure(record, now)
    return Check(False, failed, "locked" if locked(failed, now) else "wrong")


def count_failure(record: PortalMessage, now: float | None = None) -> PortalMessage:
    """`record` with one more wrong attempt; the last allowed one locks the message (and drops
    the current code, so a locked message needs a new one)."""
    now = now or time.time()
    failures = record.failed_codes + 1
    if failures >= MAX_FAILURES:
        return dataclasses.replace(record, failed_codes=0, code_hash="", locked_until=now + LOCKOUT)
    return dataclasses.replace(record, failed_codes=failures)
