"""Delivery status notifications: RFC 3464 reports to the envelope sender.

A DSN is ``multipart/report; report-type=delivery-status`` with three parts: a short text for
people, the ``message/delivery-status`` fields per recipient, and the original's header fields
as ``text/rfc822-headers``. Never the body, even when the client asked for RET=FULL: the body may
hold PHI and a DSN travels wherever the sender address points. The header block is taken only as
far as lines are well-formed header fields, so a message without headers cannot leak body lines.

A report about a message that policy protected is protected the same way (it carries the
original's headers, and a reply from the remote server may quote them): it inherits the
protection methods. A report about an unprotected message returns only the header fields that
identify it (`IDENTIFYING_FIELDS`): no Subject, no X- headers, nothing else a sender may have put
PHI into.

Which recipients get reported follows their RFC 3461 NOTIFY: NEVER means none; without NOTIFY,
failures and delays are reported (the default RFC 3461 §4.1 allows). A message from the null sender
never gets a DSN (RFC 5321 §4.5.5), which is what stops bounce loops.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from email.utils import formatdate
from typing import Literal

from gateway.message import PolicyDecision, QueuedMessage, Recipient

Action = Literal["failed", "delayed", "delivered", "relayed"]
_NOTIFY_FOR: dict[str, str] = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS",
                               "relayed": "SUCCESS"}
_SUBJECTS: dict[str, str] = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}
_HEADER_LINE = re.compile(rb"^(?:[!-9;-~]+:|[ \t])")  # a field name and colon, or a continuation
MAX_RETURNED_HEADERS = 64 * 1024
MAX_DIAGNOSTIC = 500


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's line in a report."""

    recipient: Recipient
    action: Action
    status: str  # enhanced status code
    diagnostic: str | None = None  # the remote reply, e.g. "550 5.1.1 no such user"
    remote_mta: str | None = None  # MX host name that gave the diagnostic
    last_attempt: float | None = None
    will_retry_until: float | None = None


def wanted(message: QueuedMessage, recipient: Recipient, action: Action) -> bool:
    """Whether the sender asked for (or by default gets) a report of `action` for `recipient`."""
    if message.envelope.sender == "":
        return False
    if "NEVER" in recipient.notify:
        return False
    if not recipient.notify:
        return action in ("failed", "delayed")
    return _NOTIFY_FOR[action] in recipient.notify


IDENTIFYING_FIELDS = frozenset((b"date", b"from", b"to", b"cc", b"message-id", b"in-reply-to"))


def original_headers(content: bytes, *, identifying_only: bool = False) -> bytes:
    """The header block of `content`: well-formed field lines up to the first blank line, capped;
    with `identifying_only`, only the fields in IDENTIFYING_FIELDS (and their continuations)."""
    kept: list[bytes] = []
    size = 0
    keeping = True
    for number, line in enumerate(content[:MAX_RETURNED_HEADERS].splitlines(keepends=False)):
        if not line or not _HEADER_LINE.match(line) or (number == 0 and line[:1] in b" \t"):
            break
        if line[:1] not in b" \t":
            keeping = not identifying_only or line.partition(b":")[0].strip().lower() in IDENTIFYING_FIELDS
        if not keeping:
            continue
        size += len(line) + 2
        if size > MAX_RETURNED_HEADERS:
            break
        kept.append(line)
    return b"".join(line + b"\r\n" for line in kept)


def protection_for(message: QueuedMessage) -> PolicyDecision | None:
    """The protection a report about `message` needs: that of the original, if it had any."""
    original = message.policy
    if not original.protect:
        return None
    return PolicyDecision(action="encrypt", rules=("dsn-of-protected",), protect=(0,),
                          methods=original.methods)


def build(*, hostname: str, message: QueuedMessage, headers: bytes,
          entries: list[DsnRecipient], now: float) -> bytes:
    """The DSN message (CRLF line endings), ready to queue with the null sender."""
    worst = next(a for a in ("failed", "delayed", "relayed", "delivered")
                 if any(e.action == a for e in entries))
    boundary = f"{secrets.token_hex(12)}/{hostname}"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{message.envelope.sender}>",
        f"Subject: {_SUBJECTS[worst]}",
        f"Date: {formatdate(now)}",
        f"Message-ID: <{message.queue_id}.{secrets.token_hex(6)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *_human_part(hostname, worst, entries),
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailward-Queue-ID: {message.queue_id}",
        *([f"Original-Envelope-Id: {message.envelope.envid}"]
          if message.envelope.envid else []),
        f"Arrival-Date: {formatdate(message.received_at)}",
    ]
    for entry in entries:
        lines += ["", *_recipient_fields(entry)]
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    # "replace": an address that was not valid UTF-8 (queued by an older version) still reports.
    text = "\r\n".join(lines).encode("utf-8", "replace") + b"\r\n" + headers
    return text + f"\r\n--{boundary}--\r\n".encode()


def _human_part(hostname: str, worst: str, entries: list[DsnRecipient]) -> list[str]:
    intro = {
        "failed": "Your message could not be delivered to one or more recipients.",
        "delayed": "Your message has not been delivered yet to one or more recipients. "
                   "Delivery is still being attempted; you do not need to resend it.",
        "relayed": "Your message was delivered to the recipients' mail systems.",
        "delivered": "Your message was delivered to the recipients' mail systems.",
    }[worst]
    lines = [f"This is the mail system at host {hostname}.", "", intro,
             "The message itself is not returned here; only its header fields are.", ""]
    for entry in entries:
        reason = f": {entry.diagnostic}" if entry.diagnostic else ""
        lines.append(f"<{entry.recipient.address}> {entry.action} ({entry.status}){reason}")
    return lines


def _recipient_fields(entry: DsnRecipient) -> list[str]:
    fields = []
    if entry.recipient.orcpt:
        kind, _, address = entry.recipient.orcpt.partition(";")
        fields.append(f"Original-Recipient: {kind}; {address}")
    fields += [f"Final-Recipient: rfc822; {entry.recipient.address}",
               f"Action: {entry.action}",
               f"Status: {entry.status}"]
    if entry.remote_mta:
        fields.append(f"Remote-MTA: dns; {entry.remote_mta}")
    if entry.diagnostic:
        fields.append(f"Diagnostic-Code: smtp; {' '.join(entry.diagnostic.split())[:MAX_DIAGNOSTIC]}")
    if entry.last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {formatdate(entry.last_attempt)}")
    if entry.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {formatdate(entry.will_retry_until)}")
    return fields
