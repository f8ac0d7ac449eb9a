"""Mail to the gateway itself: feedback loop reports and mailto: unsubscribes.

These addresses at `hostname` are accepted from anyone (they are not relaying) and handled at
the end of DATA instead of being queued:

- `feedback.fbl_address`: ARF reports (RFC 5965). The complained-about recipient (the report's
  Original-Rcpt-To, else the To of the returned message) is suppressed for the sender domain,
  and the complaint is counted per egress pool (by the report's Source-IP) and sender domain.
- ``unsubscribe+MAC@hostname`` (`delivery.unsubscribe`): the request's sender is suppressed for
  the sender domain the MAC was made for.

Reports are parsed defensively (size-bounded, any MIME damage is just "no report"); a request
that cannot be matched is logged and dropped, and the client still gets a 250, as feedback
senders expect.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Any, Literal

from gateway import eventlog, metrics
from gateway.reputation.unsubscribe import UnsubscribeLinks
from gateway.state.suppression import Suppression

log = logging.getLogger("mailward.feedback")
Kind = Literal["fbl", "unsubscribe"]
MAX_REPORT = 2 * 1024 * 1024


@dataclass(frozen=True)
class Complaint:
    recipient: str
    sender_domain: str
    source_ip: str | None
    feedback_type: str


def parse_arf(content: bytes) -> Complaint | None:
    """The complaint in an ARF report, or None for anything else."""
    if len(content) > MAX_REPORT:
        return None
    try:
        report = email.message_from_bytes(content, policy=email.policy.default)
        if report.get_content_type() != "multipart/report" or \
                str(report.get_param("report-type", "")).lower() != "feedback-report":
            return None
        fields: Message | None = None
        original: Message | None = None
        for part in report.iter_parts() if isinstance(report, EmailMessage) else []:
            kind = part.get_content_type()
            if kind == "message/feedback-report":
                fields = _embedded(part)
            elif kind in ("message/rfc822", "text/rfc822-headers"):
                original = _embedded(part)
        if fields is None:
            return None
        recipient = _address(fields.get("Original-Rcpt-To")) or \
            (_address(original.get("To")) if original is not None else None)
        sender = _address(fields.get("Original-Mail-From")) or \
            (_address(original.get("From")) if original is not None else None)
        if not recipient or not sender:
            return None
        return Complaint(recipient, sender.rpartition("@")[2].lower(),
                         str(fields.get("Source-IP", "")).strip() or None,
                         str(fields.get("Feedback-Type", "abuse")).strip().lower())
    except (ValueError, TypeError, LookupError, AttributeError, IndexError):
        return None


def _embedded(part: Message) -> Message:
    """A message/* part's headers, whether the parser nested a message or left text."""
    payload: Any = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raw = part.get_payload(decode=True)
    text = raw if isinstance(raw, bytes) else str(payload).encode("utf-8", "replace")
    return email.message_from_bytes(text.lstrip(), policy=email.policy.compat32)


def _address(value: object) -> str | None:
    if value is None:
        return None
    found = [a for _, a in email.utils.getaddresses([str(value)]) if "@" in a]
    return found[0].lower() if found else None


class OneClick:
    """The portal's unsubscribe endpoint (RFC 8058): reads link tokens, records unsubscribes."""

    def __init__(self, feedback: Feedback, write_audit: Callable[..., Awaitable[None]]) -> None:
        assert feedback.links is not None
        self.feedback, self.links, self.write_audit = feedback, feedback.links, write_audit

    def read(self, token: str) -> tuple[str, str] | None:
        return self.links.read_token(token)

    async def done(self, address: str, sender_domain: str) -> None:
        record = await asyncio.to_thread(self.feedback.unsubscribed, address, sender_domain, "one-click")
        await self.write_audit(record)


class Feedback:
    def __init__(self, *, hostname: str, fbl_address: str | None, unsubscribe_local_part: str,
                 links: UnsubscribeLinks | None, suppression: Suppression,
                 sender_domains: Iterable[str], pool_of_ip: Mapping[str, str]) -> None:
        self.hostname = hostname.lower()
        self.fbl_address = fbl_address.lower() if fbl_address else None
        self.prefix = f"{unsubscribe_local_part.lower()}+"
        self.links = links
        self.suppression = suppression
        self.sender_domains = sorted({d.lower() for d in sender_domains})
        self.pool_of_ip = dict(pool_of_ip)

    def kind(self, address: str) -> Kind | None:
        address = address.lower()
        if self.fbl_address is not None and address == self.fbl_address:
            return "fbl"
        local, _, domain = address.rpartition("@")
        if self.links is not None and domain == self.hostname and local.startswith(self.prefix):
            return "unsubscribe"
        return None

    def handle(self, kind: Kind, address: str, sender: str, content: bytes) -> dict[str, Any] | None:
        """Act on one message to a feedback address (blocking: sqlite); the audit record, if any."""
        if kind == "fbl":
            return self._complaint(content)
        return self._unsubscribe(address, sender, content)

    def _complaint(self, content: bytes) -> dict[str, Any] | None:
        complaint = parse_arf(content)
        if complaint is None:
            eventlog.event(log, "fbl_unreadable", logging.WARNING, note="not an ARF feedback report")
            return None
        pool = self.pool_of_ip.get(complaint.source_ip or "", "default")
        domain_label = complaint.sender_domain if complaint.sender_domain in self.sender_domains else "other"
        metrics.COMPLAINTS.labels(pool, domain_label).inc()
        if self.suppression.add(complaint.recipient, scope=complaint.sender_domain, reason="complaint",
                                detail=complaint.feedback_type):
            metrics.SUPPRESSED.labels("complaint").inc()
        eventlog.event(log, "complaint", to=f"<{complaint.recipient}>", sender_domain=complaint.sender_domain,
                       pool=pool, type=complaint.feedback_type)
        return {"event": "complaint", "queue_id": None, "recipient": complaint.recipient,
                "sender_domain": complaint.sender_domain, "pool": pool, "type": complaint.feedback_type}

    def _unsubscribe(self, address: str, sender: str, content: bytes) -> dict[str, Any] | None:
        assert self.links is not None
        mac = address.rpartition("@")[0][len(self.prefix):]
        head = email.message_from_bytes(content[:64 * 1024], policy=email.policy.compat32)
        for requester in dict.fromkeys(a for a in (sender.lower(), _address(head.get("From"))) if a):
            domain = self.links.sender_domain_of(mac, requester, self.sender_domains)
            if domain is not None:
                return self.unsubscribed(requester, domain, "mailto")
        eventlog.event(log, "unsubscribe_unmatched", logging.WARNING,
                       note="the request's sender does not match the link it used")
        return None

    def unsubscribed(self, address: str, sender_domain: str, how: str) -> dict[str, Any]:
        if self.suppression.add(address, scope=sender_domain, reason="unsubscribe", detail=how):
            metrics.SUPPRESSED.labels("unsubscribe").inc()
        eventlog.event(log, "unsubscribed", to=f"<{address}>", sender_domain=sender_domain, via=how)
        return {"event": "unsubscribed", "queue_id": None, "recipient": address,
                "sender_domain": sender_domain, "via": how}
