"""Messages the gateway writes itself (DSNs, compliance notices, receipts, TLS reports, portal
notifications, passcodes and replies): one way to turn them into a queued message, so they all
carry the same local client record and go through the spool like accepted mail."""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from gateway.message import ClientInfo, Envelope, PolicyDecision, QueuedMessage, Recipient
from gateway.spool.store import new_queue_id


def wire_bytes(mail: EmailMessage) -> bytes:
    """The message with CRLF line ends, as it goes over SMTP and into the spool."""
    return mail.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def notice(*, sender: str, to: str, subject: str, hostname: str) -> EmailMessage:
    """A message from the gateway itself with its header fields set (a Message-ID on our own
    host name, the date now); the caller adds the rest and its content."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=hostname)
    return mail


def generated(content: bytes | EmailMessage, *, recipient: str, hostname: str, listener: str,
              sender: str = "", policy: PolicyDecision | None = None,
              about: str | None = None) -> tuple[QueuedMessage, bytes]:
    """A queued message for one `recipient`; `sender` "" (the default) means the null sender, so
    that a notice can never bounce back into a loop. `listener` names the kind in logs."""
    message_id = None
    if isinstance(content, EmailMessage):
        message_id = content["Message-ID"]
        content = wire_bytes(content)
    queued = QueuedMessage(
        queue_id=new_queue_id(), received_at=time.time(),
        envelope=Envelope(sender=sender, recipients=(Recipient(recipient),), body="8BITMIME",
                          smtputf8=not (recipient.isascii() and sender.isascii())),
        client=ClientInfo(address="127.0.0.1", helo=hostname, listener=listener, relay_reason="local"),
        size=len(content), message_id=message_id, policy=policy or PolicyDecision(), about=about)
    return queued, content
