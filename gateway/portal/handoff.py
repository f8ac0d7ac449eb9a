"""Delivery's hand-off to the portal: store the message for one recipient and queue the
notification with the link. The delivery agent calls `deliver`; the recipient then counts as
delivered, protection "portal". Also builds the passcode mail and the recipient's secure reply,
which the web app queues through the same spool."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid

from gateway import eventlog, metrics
from gateway.audit.events import Audit
from gateway.config import PortalConfig
from gateway.message import PolicyDecision, QueuedMessage
from gateway.portal import notification
from gateway.portal.store import PortalMessage, PortalStore
from gateway.spool.generated import generated

log = logging.getLogger("mailward.portal")
Enqueue = Callable[[QueuedMessage, bytes], Awaitable[None]]


class PortalHandoff:
    def __init__(self, store: PortalStore, config: PortalConfig, hostname: str, enqueue: Enqueue,
                 audit: Audit | None = None) -> None:
        self.store = store
        self.audit = audit or Audit.off()
        self.config = config
        self.hostname = hostname
        self.enqueue = enqueue

    async def deliver(self, message: QueuedMessage, content: bytes, recipient: str) -> str:
        """Store for `recipient` and queue the notification; returns the portal message id."""
        token, record = await asyncio.to_thread(functools.partial(
            self.store.store, content, recipient=recipient, sender=message.envelope.sender,
            ttl=float(self.config.message_ttl), queue_id=message.queue_id))
        notice, notice_content = notification.build(self.config, token=token, recipient=recipient,
                                                    expires=record.expires, hostname=self.hostname,
                                                    sender=message.envelope.sender,
                                                    about=message.queue_id)
        await self.enqueue(notice, notice_content)
        metrics.PORTAL_EVENTS.labels("stored").inc()
        eventlog.event(log, "portal_stored", queue_id=message.queue_id, message_id=record.message_id,
                       to=f"<{recipient}>", notice_queue_id=notice.queue_id)
        await self.audit.write({"event": "portal_stored", "queue_id": message.queue_id,
                                "portal_id": record.message_id, "recipient": recipient,
                                "notice_queue_id": notice.queue_id, "expires": int(record.expires)})
        return record.message_id

    async def send_code(self, record: PortalMessage, code: str) -> None:
        await self.send_notice(
            record, f"Your passcode for a secure message from {self.config.branding.organization}",
            f"Your one-time passcode is {code}\n\nIt is valid for 10 minutes. If you did not ask for "
            "it, you can ignore this email.\n")

    async def send_notice(self, record: PortalMessage, subject: str, text: str) -> None:
        """A short mail from the gateway to the recipient (passcodes, password changes)."""
        mail = EmailMessage()
        mail["From"] = self.gateway_address
        mail["To"] = record.recipient
        mail["Subject"] = subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(domain=self.hostname)
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(text)
        await self.enqueue(*generated(mail, recipient=record.recipient, hostname=self.hostname,
                                      listener="portal"))

    @property
    def gateway_address(self) -> str:
        """The gateway's own address: From of everything it writes, signed with its DKIM key."""
        return self.config.branding.sender or f"no-reply@{self.hostname}"

    async def send_reply(self, record: PortalMessage, original: EmailMessage, text: str) -> None:
        """The recipient's reply, to the original sender, only over verified TLS (never plaintext).
        It is sent from the gateway's own address ("<recipient> via secure portal", Reply-To the
        recipient) and DKIM signed with the gateway's key: sent From the recipient's own domain,
        from our IPs and unsigned, it would fail that domain's DMARC."""
        reply = EmailMessage()
        reply["From"] = formataddr((f"{record.recipient} via secure portal", self.gateway_address))
        reply["Reply-To"] = record.recipient
        reply["To"] = record.sender
        subject = str(original.get("Subject", ""))
        reply["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()
        reply["Date"] = formatdate(localtime=False)
        reply["Message-ID"] = make_msgid(domain=self.hostname)
        if original.get("Message-ID"):
            reply["In-Reply-To"] = str(original["Message-ID"])
            reply["References"] = str(original["Message-ID"])
        reply["X-Mailward-Portal-Reply"] = record.message_id
        reply.set_content(text + "\n")
        protected = PolicyDecision(action="encrypt", rules=("portal-reply",), protect=(0,), methods=("tls",))
        await self.enqueue(*generated(reply, recipient=record.sender, sender=self.gateway_address,
                                      hostname=self.hostname, listener="portal", policy=protected))

