"""Ingress policy: relay control, limits, the policy pipeline and the hand-off to the spool.

The protocol (`ingress.protocol`) parses; this handler decides. At the end of DATA the message
goes through the pipeline (DLP first), whose outcome is the reply: a block is a 5xx, a temporary
failure a 4xx, a hold is queued in ``hold/``. The reply is 250 only once `Spool.store` has
returned, i.e. the message is encrypted, written and fsync'd; any failure there is a 451, so the
client keeps the message and retries. Nothing is acknowledged that is not on disk.

`settings` is swapped whole on reload (SIGHUP); a session reads it at each step, so a reload takes
effect for the next command without dropping connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import TLSSetupException

from gateway import eventlog, metrics
from gateway.audit import events as audit_events
from gateway.audit.events import Audit
from gateway.certs import peer_names
from gateway.config import LimitsConfig, ListenerConfig
from gateway.errors import Hold, Outcome, SpoolError
from gateway.ingress import replies
from gateway.ingress.authlimit import AuthThrottle
from gateway.ingress.feedback import Feedback
from gateway.ingress.pools import take_pool_header
from gateway.ingress.protocol import GatewaySession, GatewaySMTP, Transaction
from gateway.ingress.received import received_header
from gateway.ingress.relay import RelayPolicy
from gateway.ingress.users import UserStore
from gateway.memory import MemoryBudget
from gateway.message import ClientInfo, Envelope, QueuedMessage, Recipient
from gateway.pipeline import Pipeline, PipelineItem
from gateway.spool import QueueState, Spool, new_queue_id
from gateway.spool.store import Content
from gateway.stages.dlp.scanner import ScanSummary
from gateway.typedyaml import address_in

log = logging.getLogger("mailward.smtpd")

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]{1,250}>)", re.IGNORECASE | re.MULTILINE)
_HEADER_SCAN = 64 * 1024  # Message-ID is looked for in the first part of the message only

# Called after a message is durably queued (metrics, scheduler wake-up).
AcceptedHook = Callable[[QueuedMessage], None]


@dataclass(frozen=True)
class Submitted:
    """What became of a submitted message: its queue id if accepted, and the SMTP answer."""

    queue_id: str | None
    reply: str
    code: int
    held: bool = False


@dataclass(frozen=True)
class IngressSettings:
    """The reloadable part of the ingress."""

    hostname: str
    limits: LimitsConfig
    relay: RelayPolicy
    users: UserStore
    pipeline: Pipeline = Pipeline(())
    pools: frozenset[str] = frozenset()  # pools a client may name in X-Mailward-Pool
    pool_header: bool = True
    # Listeners (by label) with a relay block of their own; the others use `relay`.
    listener_relay: Mapping[str, RelayPolicy] = field(default_factory=dict)

    def relay_for(self, listener: ListenerConfig) -> RelayPolicy:
        return self.listener_relay.get(listener.label, self.relay)


class IngressHandler:
    """aiosmtpd handler shared by every listener."""

    def __init__(self, settings: IngressSettings, spool: Spool,
                 on_accepted: AcceptedHook | None = None, audit: Audit | None = None,
                 feedback: Feedback | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.on_accepted = on_accepted
        self.audit = audit or Audit.off()
        self.feedback = feedback
        self.auth_throttle = AuthThrottle()  # failed AUTH across all connections of this process
        self.memory = MemoryBudget()  # large messages of all sessions of this process

    async def auth_failed(self, server: GatewaySMTP, user: str, reason: str, **fields: object) -> None:
        """A failed or refused AUTH: one log line fail2ban can match (``event=auth_failed
        client=ADDRESS``), a metric and an audit record. The name is logged (it is what an admin
        greps for); the password never is."""
        metrics.AUTH_FAILURES.labels(server.listener.label, reason.partition(" ")[0]).inc()
        eventlog.event(log, "auth_failed", logging.WARNING, client=server.client_ip,
                       listener=server.listener.label, user=user[:64], reason=reason, **fields)
        await self.audit.write({"event": "auth_failed", "queue_id": None, "client": server.client_ip,
                                "listener": server.listener.label, "user": user[:64], "reason": reason,
                                **fields})

    # -- aiosmtpd hooks -----------------------------------------------------------------------

    async def handle_EHLO(self, server: GatewaySMTP, session: GatewaySession, envelope: Transaction,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        if server.listener.auth != "off" and server._tls_protocol is not None:
            kept.append("250-AUTH PLAIN LOGIN")
        kept += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        if server._tls_protocol is not None:
            kept.append("250-REQUIRETLS")  # RFC 8689 §4.1: only once the session is encrypted
        kept.append("250 HELP")
        return kept

    def handle_STARTTLS(self, server: GatewaySMTP, session: GatewaySession,
                        envelope: Transaction) -> bool:
        ssl_object = (session.ssl or {}).get("ssl_object")
        if ssl_object is None:
            return False
        session.tls_version = ssl_object.version()
        cipher = ssl_object.cipher()
        session.tls_cipher = cipher[0] if cipher else None
        names = peer_names(ssl_object.getpeercert())
        session.cert_name = self.settings.relay_for(server.listener).cert_matches(names)
        if session.cert_name is not None:
            server.prove()
        if names:
            eventlog.event(log, "client_certificate", client=server.client_ip,
                           subject=names[0], accepted="yes" if session.cert_name else "no")
        return True

    async def handle_PROXY(self, server: GatewaySMTP, session: GatewaySession, envelope: Transaction,
                           proxy_data: ProxyData) -> bool:
        """A PROXY header (v1 or v2) from a load balancer: only from `proxy_from`, and then the
        client is the one it names."""
        balancer = server.client_ip
        if not address_in(balancer, (net.network for net in server.listener.proxy_from)):
            eventlog.event(log, "proxy_refused", logging.WARNING, client=balancer,
                           listener=server.listener.label, reason="not in proxy_from")
            return False
        source = proxy_data.src_addr
        if not proxy_data.valid or source is None:
            return False
        eventlog.event(log, "proxied", client=str(source), via=balancer, listener=server.listener.label)
        return server.proxied_client(str(source))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # aiosmtpd closes the connection itself; a failed handshake is the client's problem.
            eventlog.event(log, "tls_handshake_failed", logging.WARNING,
                           reason=type(error.__cause__).__name__)
            return replies.TLS_HANDSHAKE_FAILED
        # Fail closed and say nothing internal to the client; the traceback goes to the log.
        log.error("event=internal_error error=%s", type(error).__name__, exc_info=error)
        return replies.INTERNAL_ERROR

    # -- called by the protocol after parsing -------------------------------------------------

    async def mail_from(self, server: GatewaySMTP, session: GatewaySession, envelope: Transaction,
                        address: str) -> str:
        settings = self.settings
        if not settings.relay.sender_allowed(address):
            if self.feedback is None:
                self._reject(server, "sender_domain")
                return replies.SENDER_DOMAIN_DENIED.format(address=address)
            # Complaint reports and unsubscribes come from anywhere: the sender domain is checked
            # at RCPT, for recipients that would be relayed.
            envelope.sender_denied = True
        envelope.mail_from = address
        return replies.OK_SENDER

    async def rcpt_to(self, server: GatewaySMTP, session: GatewaySession, envelope: Transaction,
                      recipient: Recipient) -> str:
        settings = self.settings
        kind = self.feedback.kind(recipient.address) if self.feedback is not None else None
        if kind is not None:  # the gateway's own address: anyone may write, nothing is relayed
            if len(envelope.rcpt_tos) >= settings.limits.max_recipients:
                return replies.TOO_MANY_RECIPIENTS
            envelope.feedback.append((kind, recipient.address))
            envelope.rcpt_tos.append(recipient.address)
            return replies.OK_RECIPIENT
        if envelope.sender_denied:
            self._reject(server, "sender_domain")
            return replies.SENDER_DOMAIN_DENIED.format(address=envelope.mail_from)
        reason = settings.relay_for(server.listener).relay_reason(server.client_ip, session.auth_user,
                                                                  session.cert_name)
        if reason is None:
            self._reject(server, "relay_denied")
            return replies.RELAY_DENIED.format(address=recipient.address)
        if len(envelope.recipients) >= settings.limits.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.relay_reason = reason
        envelope.recipients.append(recipient)
        envelope.rcpt_tos.append(recipient.address)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: GatewaySMTP, session: GatewaySession,
                          envelope: Transaction) -> str:
        if envelope.spill is None:
            return await self._data(server, session, envelope)
        # A large message waits on disk for its turn, then is worked on in memory (see memory).
        async with self.memory.hold(envelope.spill.size, self.settings.limits.message_memory):
            try:
                envelope.original_content = await self.spool.offload(envelope.spill.getvalue)
            except SpoolError as exc:  # read back what was written: a disk error, or tampering
                log.error("event=queue_write_failed client=%s error=%s", server.client_ip, exc)
                return replies.QUEUE_WRITE_ERROR
            finally:
                envelope.spill.close()
            try:
                return await self._data(server, session, envelope)
            finally:
                envelope.original_content = envelope.content = None

    async def _data(self, server: GatewaySMTP, session: GatewaySession, envelope: Transaction) -> str:
        client = ClientInfo(
            address=server.client_ip, helo=session.host_name or "", listener=server.listener.label,
            auth_user=session.auth_user,
            relay_reason=envelope.relay_reason,
            tls_version=session.tls_version, tls_cipher=session.tls_cipher,
            cert_subject=session.cert_name)
        assert envelope.original_content is not None and envelope.mail_from is not None
        if envelope.feedback:
            await self._handle_feedback(envelope.feedback, envelope.mail_from, envelope.original_content)
            if not envelope.recipients:
                return replies.FEEDBACK_ACCEPTED
        asked_pool, original = take_pool_header(envelope.original_content)
        submitted = await self.submit(
            Envelope(sender=envelope.mail_from, recipients=tuple(envelope.recipients),
                     body=envelope.body_type, smtputf8=envelope.smtp_utf8, ret=envelope.ret,
                     envid=envelope.envid, requiretls=envelope.requiretls),
            original, client, asked_pool=asked_pool, size=len(envelope.original_content))
        return submitted.reply

    async def submit(self, envelope: Envelope, original: bytes, client: ClientInfo, *,
                     asked_pool: str | None = None, size: int | None = None,
                     require_protection: bool = False) -> Submitted:
        """One message through the pipeline (DLP) and into the spool, with its audit records:
        what SMTP DATA and the HTTP sending API share. The reply is the SMTP answer; `queue_id`
        is set only when the message was accepted (queued or held)."""
        settings = self.settings
        queue_id = new_queue_id()
        item = PipelineItem(QueuedMessage(
            queue_id=queue_id, received_at=time.time(), envelope=envelope, client=client,
            size=size if size is not None else len(original), message_id=_message_id(original)), original)
        state = QueueState.INCOMING
        try:
            await settings.pipeline.run(item)
        except Hold:
            state = QueueState.HOLD
        except Outcome as outcome:  # Reject or TempFail: the client gets the reply, we keep nothing
            await self._queue_generated(item)
            self._reject_policy(client.listener, client.address, queue_id, outcome.code)
            return Submitted(None, outcome.reply, outcome.code)
        if require_protection:  # the sender asks for more than policy: every recipient protected
            policy = item.message.policy
            item.message = dataclasses.replace(item.message, policy=dataclasses.replace(
                policy, protect=tuple(range(len(envelope.recipients))),
                action="encrypt" if policy.action == "allow" else policy.action))
        rcpt_tos = [recipient.address for recipient in envelope.recipients]
        # Our Received header on top; kept apart until the spool writes them one after the other,
        # so a large message is not copied whole to put a line in front of it.
        content = (received_header(client, settings.hostname, queue_id, rcpt_tos,
                                   smtputf8=envelope.smtputf8), item.content)
        pool = item.message.policy.pool
        if settings.pool_header and asked_pool is not None:
            if asked_pool in settings.pools:
                pool = asked_pool
            else:
                eventlog.event(log, "unknown_pool", logging.WARNING, queue_id=queue_id, pool=asked_pool,
                               note="X-Mailward-Pool names no configured pool; the usual choice applies")
        message = dataclasses.replace(item.message, size=sum(map(len, content)), pool=pool)
        records = [audit_events.received(message)]
        if "dlp" in item.notes or message.policy.action != "allow":
            summary = item.notes.get("dlp")
            scanned = summary if isinstance(summary, ScanSummary) else None
            records.append(audit_events.policy(message, scanned))
        if state is QueueState.HOLD:
            records.append({"event": "held", "queue_id": queue_id, "reason": "policy",
                            "rules": list(message.policy.rules)})
        if not await self._make_durable(message, content, state, records):
            return Submitted(None, replies.QUEUE_WRITE_ERROR, 451)
        eventlog.event(log, "queued" if state is QueueState.INCOMING else "held", queue_id=queue_id,
                       client=client.address, listener=client.listener, relay=client.relay_reason,
                       sender=f"<{message.envelope.sender}>", nrcpt=len(envelope.recipients),
                       size=message.size, tls=client.tls_version or "none",
                       user=client.auth_user)
        metrics.MESSAGES_RECEIVED.labels(client.listener, client.relay_reason).inc()
        if self.on_accepted is not None and state is QueueState.INCOMING:
            self.on_accepted(message)
        await self._queue_generated(item)
        return Submitted(queue_id, replies.QUEUED.format(queue_id=queue_id), 250,
                         held=state is QueueState.HOLD)

    async def _make_durable(self, message: QueuedMessage, content: Content, state: QueueState,
                            records: list[dict[str, object]]) -> bool:
        """Store the message and write its audit records side by side (the 250 needs both); on
        a failure undo the half that worked, as far as possible, and say so."""
        stored: object = None
        audited: object = None
        if self.audit.log is None:
            try:
                await self.spool.store(message, content, state)
            except Exception as exc:
                stored = exc
        else:
            stored, audited = await asyncio.gather(self.spool.store(message, content, state),
                                                   self.audit.write(*records), return_exceptions=True)
        if not isinstance(stored, BaseException) and not isinstance(audited, BaseException):
            return True
        failed = stored if isinstance(stored, BaseException) else audited
        log.error("event=queue_write_failed queue_id=%s error=%s", message.queue_id, failed)
        with contextlib.suppress(Exception):
            if not isinstance(stored, BaseException):
                await self.spool.offload(self.spool.remove, message.queue_id)
            else:
                await self.audit.write({"event": "not_queued", "queue_id": message.queue_id,
                                        "reason": "queue_write_failed"})
        return False

    async def _handle_feedback(self, addresses: list[tuple[str, str]], sender: str, content: bytes) -> None:
        """Complaint reports and unsubscribes to the gateway's own addresses, acted on at once."""
        assert self.feedback is not None
        records = []
        for kind, address in addresses:
            record = await self.spool.offload(self.feedback.handle, kind, address, sender, content)
            if record is not None:
                records.append(record)
        await self.audit.write(*records)

    async def _queue_generated(self, item: PipelineItem) -> None:
        """Queue what the stages generated (compliance notifications). A failure here is logged
        and does not change the answer about the message itself."""
        for message, content in item.generated:
            try:
                await self.spool.store(message, content)
            except Exception as exc:
                log.error("event=queue_write_failed queue_id=%s error=%s", message.queue_id, exc)
                continue
            eventlog.event(log, "queued", queue_id=message.queue_id, client="local",
                           listener=message.client.listener, about=item.message.queue_id,
                           nrcpt=len(message.envelope.recipients), size=message.size)
            if self.on_accepted is not None:
                self.on_accepted(message)

    @staticmethod
    def _reject(server: GatewaySMTP, reason: str, **fields: object) -> None:
        metrics.SMTP_REJECTIONS.labels(server.listener.label, reason).inc()
        eventlog.event(log, "rejected", logging.INFO, client=server.client_ip,
                       listener=server.listener.label, reason=reason, **fields)

    @staticmethod
    def _reject_policy(listener: str, client: str, queue_id: str, code: int) -> None:
        metrics.SMTP_REJECTIONS.labels(listener, "policy").inc()
        eventlog.event(log, "rejected", logging.INFO, client=client, listener=listener, reason="policy",
                       queue_id=queue_id, reply=code)


def _message_id(content: bytes) -> str | None:
    head = content[:_HEADER_SCAN]
    end = head.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(head if end < 0 else head[:end])
    return match.group(1).decode("ascii", "replace") if match else None
