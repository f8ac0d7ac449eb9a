"""Audit records built from the gateway's own objects, so every writer names fields the same way,
and `Audit`, the one object the ingress, delivery, portal and CLI write through.

What a record may hold: queue and message ids, envelope addresses (needed for an accounting of
disclosures), client and server addresses, TLS parameters, reply codes, rule and detector names
with counts, admin user names. Never a subject, body, attachment name or detected value.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.link import RemoteAuditLog
from gateway.audit.log import AuditLog
from gateway.config import AuditConfig
from gateway.keyfiles import hex_key
from gateway.message import Attempt, QueuedMessage

if TYPE_CHECKING:
    from gateway.stages.dlp.scanner import ScanSummary

Record = dict[str, Any]


def received(message: QueuedMessage) -> Record:
    client = message.client
    return {"event": "received", "queue_id": message.queue_id, "message_id": message.message_id,
            "sender": message.envelope.sender, "recipients": [r.address for r in message.envelope.recipients],
            "client": client.address, "helo": client.helo, "listener": client.listener,
            "relay": client.relay_reason, "auth": client.auth_user, "client_cert": client.cert_subject,
            "tls": {"version": client.tls_version, "cipher": client.tls_cipher}
            if client.tls_version else None,
            "size": message.size,
            **({"via": "api", "token": (client.auth_user or "").removeprefix("token:")}
               if client.listener == "api" else {})}


def policy(message: QueuedMessage, summary: ScanSummary | None) -> Record:
    decision = message.policy
    recipients = message.envelope.recipients
    return {"event": "policy", "queue_id": message.queue_id, "action": decision.action,
            "rules": list(decision.rules),
            "detectors": dict(sorted(summary.counts.items())) if summary is not None else {},
            "facts": sorted(summary.facts) if summary is not None else [],
            "protected": [recipients[i].address for i in decision.protect if i < len(recipients)],
            "methods": list(decision.methods) if decision.protect else []}


def attempt(message: QueuedMessage, outcome: str, attempt: Attempt, status: str, attempts: int) -> Record:
    """One recipient's delivery attempt; `outcome` (delivered, deferred, bounced, expired) is the
    event name."""
    tls = attempt.tls
    return {"event": outcome, "queue_id": message.queue_id,
            "recipient": message.envelope.recipients[attempt.index].address,
            "mx": attempt.remote_host, "ip": attempt.remote_ip, "egress_ip": attempt.egress_ip,
            "tls": {"version": tls.version, "cipher": tls.cipher, "verified": tls.verified, "dane": tls.dane}
            if tls.version else None,
            "protection": attempt.protection_used, "code": attempt.reply.code, "status": status,
            "attempt": attempts, "pool": attempt.pool or None}


def protection(message: QueuedMessage, attempt: Attempt) -> Record:
    """How a protected recipient was protected, and why the stronger methods were not used."""
    return {"event": "protection", "queue_id": message.queue_id,
            "recipient": message.envelope.recipients[attempt.index].address,
            "protection": attempt.protection_used, "reason": attempt.note or None}


def signed(queue_id: str, dkim: str) -> Record:
    domain, _, selectors = dkim.partition(":")
    return {"event": "signed", "queue_id": queue_id, "domain": domain, "selectors": selectors.split(",")}


def admin(event: str, queue_id: str) -> Record:
    """An admin's action on the queue (held, released, deleted), with the OS user who did it."""
    return {"event": event, "queue_id": queue_id, "user": os_user(), "by": "admin"}


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


class Audit:
    """Writes records to the audit log, or nowhere with `audit.enabled: false`. `observers` are
    told after each durable write (the webhook dispatcher wakes up)."""

    def __init__(self, log: AuditLog | RemoteAuditLog | None) -> None:
        self.log = log
        self.observers: list[Callable[[], None]] = []

    @classmethod
    def open(cls, config: AuditConfig, *, create_key: bool = True) -> Audit:
        if not config.enabled:
            return cls(None)
        return cls(AuditLog(config.dir, hex_key(config.key_file, create=create_key)))

    @classmethod
    def remote(cls, config: AuditConfig, fd: int) -> Audit:
        """In a child process: records go to the parent's writer through the link on `fd`."""
        if not config.enabled:
            return cls(None)
        return cls(RemoteAuditLog(fd, config.dir))

    @classmethod
    def off(cls) -> Audit:
        return cls(None)

    @property
    def directory(self) -> Path | None:
        return self.log.directory if self.log is not None else None

    async def write(self, *records: Record) -> None:
        if self.log is None or not records:
            return
        await self.log.write(*records)
        for observer in self.observers:
            observer()

    def write_sync(self, *records: Record) -> None:
        """For the CLI, which always writes the log itself."""
        if self.log is None or not records:
            return
        if not isinstance(self.log, AuditLog):
            raise RuntimeError("write_sync needs the audit log itself, not the link to the writer")
        self.log.append(list(records))

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
