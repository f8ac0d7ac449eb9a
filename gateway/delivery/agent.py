"""Delivering one queued message: resolve, send per destination, then settle the results.

The scheduler hands over a message it has moved into ``active/``. Its pending recipients are
grouped by domain and each group is sent on a (reused) connection to that domain's MX, all groups
at once. Then, in this order, so that a crash at any point loses nothing and at worst repeats
what was in flight:

1. DSNs (failure, delay warning, success where the next hop cannot report it) are queued;
2. if every recipient is now final, the message is deleted; otherwise this attempt's results are
   appended to the fsync'd journal and the message moves to ``deferred/`` with its next due time.

A temporary failure past ``max_queue_age`` is final: the recipient bounces (status 4.4.7 unless
the last reply said more).

An error in our own code while sending to one destination is that destination's temporary failure
(451 4.3.0), never the whole message's: the other recipients' results are settled as usual, so
nothing they received is sent again, and the failing ones still expire. If the results cannot be
made durable (the audit log's disk is full), they are kept here and the message stays queued: the
next attempt writes them instead of sending again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import secrets
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from gateway import eventlog, metrics
from gateway.audit import events as audit_events
from gateway.audit.events import Audit
from gateway.config import DeliveryConfig
from gateway.crypto.keyrings import Keyrings
from gateway.delivery import dsn, receipt, retry
from gateway.delivery.client import ConnectionFailed, Connector, SmtpConnection, TlsPolicy
from gateway.delivery.connections import ConnectionCache
from gateway.delivery.outcomes import Outcomes
from gateway.delivery.protection import deliver_protected
from gateway.delivery.signing import DkimSigner, SignedCopies, SigningFailed
from gateway.durable import write_atomic
from gateway.errors import RetrySoon, StateUnavailable
from gateway.memory import LARGE, MemoryBudget
from gateway.message import Attempt, QueuedMessage, Recipient, RecipientState, RecipientStatus, Reply
from gateway.portal.handoff import PortalHandoff
from gateway.reputation.bounces import reputation_block
from gateway.reputation.egress import EgressPools
from gateway.reputation.shaping import Shaper
from gateway.reputation.traffic import Deferral, Route, Traffic
from gateway.resolver import Destination, MxResolver, Permanent, ResolutionError
from gateway.spool import QueueState, Spool
from gateway.spool.generated import generated
from gateway.spool.store import TooLarge
from gateway.state.limits import LocalLimits
from gateway.state.suppression import Suppression
from gateway.transport.tlscache import LearnedTls
from gateway.transport.tlspolicy import TlsRequirement
from gateway.transport.tlsrpt import TlsReportStore

log = logging.getLogger("mailward.delivery")

_RELAY = re.compile(r"^([^\[]+)\[([^\]]+)\]")  # host[address]:port


def _relay_parts(relay: str) -> tuple[str, str | None]:
    """(host, address) of a ``host[address]:port`` relay string."""
    match = _RELAY.match(relay)
    return (match.group(1), match.group(2)) if match else ("" if relay == "none" else relay, None)



SIGNING_FAILED = Reply(451, "4.3.0", "DKIM signing failed; the message is kept and retried")
RESULTS_RETRY = 10.0  # seconds until results that could not be written are tried again
SUPPRESSION_UNAVAILABLE = Reply(451, "4.3.0", "the suppression list cannot be read; the message is kept "
                                                "and retried")
SUPPRESSION_RETRY = 15.0
INTERNAL_FAILURE = Reply(451, "4.3.0", "internal error while delivering; the message is kept and retried")

_STATUS_WORD = {RecipientState.DELIVERED: "sent", RecipientState.DEFERRED: "deferred",
                RecipientState.BOUNCED: "bounced"}
_AUDIT_EVENT = {"sent": "delivered"}  # log and metrics say "sent" (as Postfix does)


@dataclass
class Settlement:
    """The results of one attempt, decided (logged, counted) once, then made durable: DSNs
    queued, audit records written, then the journal or the spool moves."""

    statuses: dict[int, RecipientStatus]
    records: list[dict[str, object]]
    reports: list[dsn.DsnRecipient]
    now: float
    held: list[int] = field(default_factory=list)  # recipients waiting for the portal, in hold/
    retry_after: dict[int, float] = field(default_factory=dict)  # index -> seconds, from shaping


class DeliveryAgent:
    def __init__(self, spool: Spool, hostname: str, config: DeliveryConfig, *, resolver: MxResolver,
                 connector: Connector, connections: ConnectionCache, tls_policy: TlsPolicy,
                 on_queued: Callable[[str], None], keyrings: Keyrings | None = None,
                 tls_reports: TlsReportStore | None = None, learned: LearnedTls | None = None,
                 portal: PortalHandoff | None = None, signer: DkimSigner | None = None,
                 audit: Audit | None = None, traffic: Traffic | None = None,
                 suppression: Suppression | None = None, outcomes: Outcomes | None = None,
                 memory: MemoryBudget | None = None, memory_limit: int = 32 << 20) -> None:
        self.spool = spool
        self.hostname = hostname
        self.config = config
        self.resolver = resolver
        self.connector = connector
        self.connections = connections
        self.tls_policy = tls_policy
        self.on_queued = on_queued  # a new message (a DSN) is in incoming/
        self.keyrings = keyrings or Keyrings.empty()
        self.tls_reports = tls_reports
        self.learned = learned or LearnedTls(None, 0.0)
        self.portal = portal
        self.signer = signer or DkimSigner({})
        self.audit = audit or Audit.off()
        if traffic is None:
            limits = LocalLimits()
            traffic = Traffic(EgressPools.load(config, hostname, limits), Shaper({}, limits), None)
        self.traffic = traffic
        self.suppression = suppression
        self.outcomes = outcomes or Outcomes(suppression, scope=config.suppression.scope, sender_domains=())
        # Results decided but not yet durable (a failed audit write): the next attempt of the
        # message commits these instead of sending again.
        self._unsettled: dict[str, Settlement] = {}
        self.memory = memory or MemoryBudget()  # kept across reloads by the service
        self.memory_limit = memory_limit  # limits.message_memory

    def take_unsettled(self, previous: DeliveryAgent) -> None:
        """A reload's new agent keeps the results the old one could not make durable yet."""
        self._unsettled.update(previous._unsettled)

    async def deliver(self, queue_id: str) -> None:
        """Deliver the message in ``active/`` and leave it finished or deferred. A large one waits
        for its share of the process's memory budget before it is read (see memory)."""
        try:
            loaded = await self.spool.offload(self._read, queue_id, LARGE)
        except TooLarge as large:
            async with self.memory.hold(large.size, self.memory_limit):
                await self._deliver(queue_id, await self.spool.offload(self._read, queue_id, None))
            return
        await self._deliver(queue_id, loaded)

    async def _deliver(self, queue_id: str, loaded: tuple[QueuedMessage, bytes, dict[int, Attempt]]) -> None:
        message, content, suppressed = loaded
        unsettled = self._unsettled.pop(queue_id, None)
        if unsettled is not None:
            await self._commit(message, content, unsettled)
            return
        # Recipients that policy says must be protected travel apart from the others: they get
        # the protection methods of the policy's order (see `protection`), never plaintext.
        by_domain: dict[tuple[str, bool], list[int]] = {}
        for index in message.pending_recipients():
            if index in suppressed:
                continue
            domain = message.envelope.recipients[index].address.rpartition("@")[2].lower()
            by_domain.setdefault((domain, message.policy.protects(index)), []).append(index)
        signed = SignedCopies(self.signer)
        groups = await asyncio.gather(*(
            self._deliver_domain(domain, message, content, indexes, signed, protect=protect)
            for (domain, protect), indexes in by_domain.items()), return_exceptions=True)
        attempts = list(suppressed.values())
        for ((domain, _), indexes), group in zip(by_domain.items(), groups, strict=True):
            if isinstance(group, BaseException):
                if not isinstance(group, Exception):
                    raise group  # cancelled: shutting down
                eventlog.event(log, "delivery_error", logging.ERROR, queue_id=queue_id, domain=domain,
                               recipients=len(indexes), error=type(group).__name__)
                log.debug("delivery error", exc_info=group)
                attempts += [Attempt(i, INTERNAL_FAILURE) for i in indexes]
            else:
                attempts += group
        await self._commit(message, content, await self._settle(message, attempts))

    def _read(self, queue_id: str, max_size: int | None) -> tuple[QueuedMessage, bytes, dict[int, Attempt]]:
        """The message, and its suppressed recipients, in one trip to the I/O thread (TooLarge
        for a file over `max_size`, not read)."""
        message, content = self.spool.read(queue_id, QueueState.ACTIVE, max_size=max_size)
        return message, content, self._suppressed(message)

    def _suppressed(self, message: QueuedMessage) -> dict[int, Attempt]:
        """Pending recipients on the suppression list, each with its final answer (a thread)."""
        if self.suppression is None or not message.envelope.sender:
            return {}  # DSNs and notices from <> go to our own senders
        sender_domain = message.envelope.sender.rpartition("@")[2].lower()
        found = {}
        for index in message.pending_recipients():
            try:
                entry = self.suppression.find(message.envelope.recipients[index].address, sender_domain)
            except StateUnavailable as exc:
                # Fail closed: nobody is written to without the list's answer.
                eventlog.event(log, "suppression_unavailable", logging.WARNING, queue_id=message.queue_id,
                               error=str(exc), retry_in=SUPPRESSION_RETRY)
                return {i: Attempt(i, SUPPRESSION_UNAVAILABLE, retry_after=SUPPRESSION_RETRY)
                        for i in message.pending_recipients()}
            if entry is not None:
                scope = "every sender" if entry.scope == "*" else entry.scope
                day = time.strftime("%Y-%m-%d", time.gmtime(entry.at))
                reply = Reply(550, "5.7.1", f"recipient is on the suppression list for {scope} "
                                            f"({entry.reason}, {day})")
                found[index] = Attempt(index, reply, drop=not self.config.suppression.dsn)
        metrics.SUPPRESSED_DROPS.inc(len(found))
        return found

    async def _deliver_domain(self, domain: str, message: QueuedMessage, content: bytes,
                              indexes: list[int], signed: SignedCopies, *,
                              protect: bool = False) -> list[Attempt]:
        destinations: Sequence[Destination] = ()
        requirement = TlsRequirement()
        if self.config.capture_dir is None:  # capture mode asks no DNS: nothing is sent
            try:
                destinations = await self.resolver.destinations(domain)
            except ResolutionError as exc:
                code = 550 if isinstance(exc, Permanent) else 451
                return [Attempt(i, Reply(code, exc.status, exc.reason)) for i in indexes]
            requirement = await self.tls_policy.requirement(domain, destinations)
        if message.envelope.requiretls:
            # RFC 8689: the sender demands verified TLS on every hop; no other method stands in.
            requirement = dataclasses.replace(requirement, level="verify",
                                              source=requirement.source or "requiretls")
            protect = False

        route = self.traffic.route(message, domain, destinations)

        async def send(to: list[int], body: bytes, needs: TlsRequirement, protection: str) -> list[Attempt]:
            return await self._send(domain, destinations, route, signed, message, body, to, needs,
                                    protection)

        if protect:
            return await deliver_protected(message, content, indexes, requirement, self.keyrings, send,
                                           learned_failure=self.learned.recent_verify_failure(domain),
                                           portal=self.portal)
        if route.marketing:
            # Each recipient gets its own unsubscribe link, so its own copy.
            sent = await asyncio.gather(*(
                send([i], self.traffic.unsubscribe_headers(route, message.envelope.recipients[i].address,
                                                          message.envelope.sender) + content,
                     requirement, "") for i in indexes))
            return [attempt for attempts in sent for attempt in attempts]
        return await send(indexes, content, requirement, "")

    async def _send(self, domain: str, destinations: Sequence[Destination], route: Route,
                    signed: SignedCopies, message: QueuedMessage, content: bytes, indexes: list[int],
                    requirement: TlsRequirement, protection: str) -> list[Attempt]:
        """One transaction (or a few, for many recipients) on a cached connection from the IP
        that traffic shaping and warm-up admit; `content` is DKIM signed here, as the last change
        before it is sent."""
        pool = route.pool.name
        admitted = await self.traffic.admit(route, time.time())
        if isinstance(admitted, Deferral):
            return [Attempt(i, admitted.reply, protection=protection, pool=pool,
                            retry_after=admitted.retry_after) for i in indexes]
        try:
            content, signature = await signed.sign(content, message.queue_id)
        except SigningFailed:
            return [Attempt(i, SIGNING_FAILED, protection=protection, pool=pool) for i in indexes]
        if self.config.capture_dir is not None:
            return await self._capture(message, content, indexes, signature, protection, pool)
        shaped = route.destination
        key: Hashable = (shaped.name, requirement, admitted.address)
        recipients = [(i, message.envelope.recipients[i]) for i in indexes]
        shaper = self.traffic.shaper

        async def open_connection() -> SmtpConnection:
            lease = await shaper.connection_slot(shaped, lambda: self.connections.evict(
                lambda k: isinstance(k, tuple) and k[0] == shaped.name))
            try:
                connection = await self.connector.open(destinations, requirement,
                                                       (admitted.address, admitted.ehlo))
            except BaseException:
                shaper.release(lease)
                raise
            connection.on_close.append(lambda: shaper.release(lease))
            return connection

        async def open_reported() -> SmtpConnection:
            try:
                connection = await open_connection()
            except ConnectionFailed as failure:
                if failure.tls_failure:
                    metrics.TLS_FAILURES.labels(requirement.level).inc()
                    self._report_session(domain, requirement, failure.relay, failure.tls_result)
                    self.learned.failure(domain, _relay_parts(failure.relay)[0], failure.reply.text,
                                         verify_required=requirement.level == "verify")
                raise
            tls = connection.tls
            metrics.TLS_SESSIONS.labels(tls.version or "none", "none" if tls.version is None else
                                        "dane" if tls.dane else "verified" if tls.verified else
                                        "unverified").inc()
            if tls.version is not None:
                self._report_session(domain, requirement, connection.relay, None, dane=tls.dane)
            self.learned.success(domain, connection.destination.host, version=tls.version,
                                 verified=tls.verified, dane=tls.dane)
            return connection

        for fresh_only in (False, True):
            try:
                async with self.connections.connection(
                        key, open_reported, fresh=fresh_only,
                        max_messages=shaped.messages_per_connection) as connection:
                    reused = connection.messages > 0
                    replies = await connection.deliver(message.envelope, recipients, content)
            except ConnectionFailed as failure:
                await self.traffic.observe(route, [failure.reply], time.time())
                # The host and address the failure was about (the log names them; so does the audit).
                host, address = _relay_parts(failure.relay)
                return [Attempt(i, failure.reply, failure.relay, remote_host=host or None, remote_ip=address,
                                egress_ip=admitted.address, tls_failure=failure.tls_failure,
                                protection=protection if not failure.tls_failure else "", pool=pool)
                        for i in indexes]
            # A cached connection that the server had meanwhile closed fails before DATA; that is
            # not the recipient's problem, so try once more on a new connection.
            if reused and connection.broken and not connection.reached_data and not fresh_only:
                continue
            break
        await self.traffic.observe(route, list(replies.values()), time.time(), admitted)
        return [Attempt(i, replies[i], connection.relay, connection.destination.host, connection.tls,
                        connection.passes_dsn, protection=protection, remote_ip=connection.address,
                        egress_ip=connection.egress_ip, dkim=signature, pool=pool) for i in indexes]

    async def _capture(self, message: QueuedMessage, content: bytes, indexes: list[int], signature: str,
                       protection: str, pool: str) -> list[Attempt]:
        """Capture mode: write what would be sent (protected, signed) to `capture_dir`, with the
        envelope in a first header line, and count it delivered ("captured")."""
        assert self.config.capture_dir is not None
        recipients = ",".join(f"<{message.envelope.recipients[i].address}>" for i in indexes)
        envelope = f"X-Mailward-Capture: from=<{message.envelope.sender}> to={recipients}\r\n".encode()
        path = self.config.capture_dir / f"{message.queue_id}-{secrets.token_hex(3)}.eml"

        def write() -> None:
            self.config.capture_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # type: ignore[union-attr]
            write_atomic(path, envelope + content)

        await self.spool.offload(write)
        eventlog.event(log, "captured", queue_id=message.queue_id, file=path, recipients=len(indexes),
                       protection=protection or "none", note="capture mode: written, not sent")
        reply = Reply(250, "2.0.0", f"captured to {path.name}")
        used = protection if protection in ("smime", "pgp") else "captured"
        return [Attempt(i, reply, "capture", protection=used, dkim=signature, pool=pool) for i in indexes]

    def _report_session(self, domain: str, requirement: TlsRequirement, relay: str, result: str | None,
                        *, dane: bool = False) -> None:
        """Count a TLS session (or its failure) for the domain's TLS report (RFC 8460)."""
        if self.tls_reports is None:
            return
        host, address = _relay_parts(relay)
        if dane or result == "tlsa-invalid":
            policy_type, strings = "tlsa", []
        elif requirement.source == "mta-sts":
            policy_type, strings = "sts", list(requirement.policy_text)
        else:
            policy_type, strings = "no-policy-found", []
        self.tls_reports.record(domain, policy_type, strings, host, address, result)

    async def _settle(self, message: QueuedMessage, attempts: Sequence[Attempt]) -> Settlement:
        """Decide each recipient's new state from its attempt: logged and counted here, once."""
        now = time.time()
        expired = retry.expired(message.received_at, now, self.config.max_queue_age)
        warn = retry.due_for_delay_warning(message.received_at, now, self.config.delay_warning)
        statuses: dict[int, RecipientStatus] = {}
        reports: list[dsn.DsnRecipient] = []
        records = [audit_events.signed(message.queue_id, dkim)
                   for dkim in dict.fromkeys(a.dkim for a in attempts if a.dkim)]
        for attempt in attempts:
            before = message.statuses[attempt.index]
            recipient = message.envelope.recipients[attempt.index]
            state, status = attempt.reply.state, attempt.reply.status
            if attempt.drop:
                state = RecipientState.DROPPED
            elif state is RecipientState.BOUNCED and not expired and \
                    reputation_block(attempt.reply.code, status, attempt.reply.text):
                state = RecipientState.DEFERRED  # about our IP, not the recipient: try again
            elif state is RecipientState.DEFERRED and expired:
                state = RecipientState.BOUNCED
                status = status if status not in ("4.0.0", "4.3.0") else "4.4.7"
            report = self._report_for(message, recipient, attempt, state, status, before, warn, now)
            if report is not None:
                reports.append(report)
            statuses[attempt.index] = RecipientStatus(
                state, now, before.attempts + 1, status, str(attempt.reply),
                warned=before.warned or (report is not None and report.action == "delayed"),
                protection=attempt.protection_used if state is RecipientState.DELIVERED else "")
            word = "expired" if expired and state is RecipientState.BOUNCED and attempt.reply.code < 500 \
                else _STATUS_WORD.get(state, state.value)
            self._log(message, recipient, attempt, word, status, now)
            if message.policy.protects(attempt.index):
                records.append(audit_events.protection(message, attempt))
            if self.outcomes.needs_thread(attempt, state):
                bounce_class, extra = await self.spool.offload(self.outcomes.account, message, attempt, state,
                                                               word, status)
            else:
                bounce_class, extra = self.outcomes.account(message, attempt, state, word, status)
            record = audit_events.attempt(message, _AUDIT_EVENT.get(word, word), attempt, status,
                                          before.attempts + 1)
            records += [{**record, "class": bounce_class} if bounce_class else record, *extra]
            if message.about is not None and state is RecipientState.BOUNCED:
                # A portal notification that cannot be delivered: the recipient of the original
                # message never learns of it, so for the original it is a failure too.
                failed = audit_events.attempt(message, "bounced", attempt, status, before.attempts + 1)
                records.append({**failed, "queue_id": message.about, "notice_queue_id": message.queue_id,
                                "protection": "portal", "reason": "portal_notification_failed"})
        held = [a.index for a in attempts if a.hold]
        if held:
            records.append({"event": "held", "queue_id": message.queue_id, "reason": "portal_unavailable",
                            "recipients": [message.envelope.recipients[i].address for i in held]})
        return Settlement(statuses, records, reports, now, held,
                          {a.index: a.retry_after for a in attempts if a.retry_after})

    async def _commit(self, message: QueuedMessage, content: bytes, settled: Settlement) -> None:
        """Make `settled` durable, then move the message on. If the DSN, the audit records or the
        journal cannot be written, the results wait in memory for the next attempt and the
        message stays queued (the scheduler defers it): nothing is sent twice."""
        try:
            if settled.reports:
                settled.records.append(await self._queue_report(message, content, settled.reports,
                                                                settled.now))
                settled.reports = []  # queued: not again when the audit write is retried
            # Durable before the spool moves on: a crash after this repeats the delivery, not
            # the silence about it.
            await self.audit.write(*settled.records)
            settled.records = []
            await self._move_on(message, settled)
        except Exception as exc:
            self._unsettled[message.queue_id] = settled
            eventlog.event(log, "results_not_durable", logging.ERROR, queue_id=message.queue_id,
                           error=f"{type(exc).__name__}: {exc}", retry=f"{RESULTS_RETRY:.0f}s",
                           note="kept in memory; written at the next attempt, nothing is sent again")
            raise RetrySoon("results not durable", RESULTS_RETRY) from exc

    async def _move_on(self, message: QueuedMessage, settled: Settlement) -> None:
        """Finish the message, or journal the results and defer (or hold) it."""
        statuses, now = settled.statuses, settled.now
        remaining = [i for i in message.pending_recipients()
                     if not statuses.get(i, message.statuses[i]).state.final]
        if not remaining:
            if message.policy.receipt and message.envelope.sender:
                final = [statuses.get(i, s) for i, s in enumerate(message.statuses)]
                receipt_message, receipt_content = receipt.build(message, final, self.hostname)
                await self.spool.store(receipt_message, receipt_content)
                self.on_queued(receipt_message.queue_id)
            await self.spool.offload(self.spool.finish, message.queue_id)
            metrics.DELIVERY_DURATION.observe(now - message.received_at)
            return
        await self.spool.offload(self.spool.record, message.queue_id, statuses)
        if settled.held:
            await self.spool.offload(functools.partial(
                self.spool.move, message.queue_id, QueueState.HOLD, only_from=(QueueState.ACTIVE,)))
            eventlog.event(log, "held", logging.WARNING, queue_id=message.queue_id,
                           reason="portal_unavailable", recipients=len(settled.held),
                           note="no verified TLS and no key: release after adding a key")
            return
        # Every pending recipient was tried in this attempt, so each remaining one has a status.
        attempts_made = max(statuses[i].attempts for i in remaining)
        due = retry.next_attempt(now, attempts_made, self.config.retry_schedule)
        # Never wait past the expiry time: the attempt then is the one that bounces.
        held_back = [after for index, after in settled.retry_after.items() if index in remaining]
        if held_back:  # shaping or warm-up said when: come back then, not on the retry schedule
            due = now + min(held_back)
        due = min(due, message.received_at + self.config.max_queue_age + 1)
        await self.spool.offload(self.spool.defer, message.queue_id, due)

    def _report_for(self, message: QueuedMessage, recipient: Recipient, attempt: Attempt,
                    state: RecipientState, status: str, before: RecipientStatus, warn: bool,
                    now: float) -> dsn.DsnRecipient | None:
        action: dsn.Action | None = None
        if state is RecipientState.BOUNCED:
            action = "failed"
        elif state is RecipientState.DELIVERED and not attempt.passes_dsn:
            action = "relayed"
        elif state is RecipientState.DEFERRED and warn and not before.warned:
            action = "delayed"
        if action is None or not dsn.wanted(message, recipient, action):
            return None
        remote = attempt.remote_host
        return dsn.DsnRecipient(
            recipient, action, status,
            # A remote reply, or our own final word (e.g. the suppression list) on a failure.
            diagnostic=str(attempt.reply) if remote or action == "failed" else None,
            remote_mta=remote, last_attempt=now,
            will_retry_until=message.received_at + self.config.max_queue_age if action == "delayed" else None)

    async def _queue_report(self, message: QueuedMessage, content: bytes,
                            reports: list[dsn.DsnRecipient], now: float) -> dict[str, object]:
        """Queue a DSN to the envelope sender, from the null sender, like any accepted message."""
        protection = dsn.protection_for(message)
        report = dsn.build(hostname=self.hostname, message=message, entries=reports, now=now,
                           headers=dsn.original_headers(content, identifying_only=protection is None))
        queued, _ = generated(report, recipient=message.envelope.sender, hostname=self.hostname,
                              listener="dsn", policy=protection)
        await self.spool.store(queued, report)
        eventlog.event(log, "dsn_queued", queue_id=message.queue_id, dsn_queue_id=queued.queue_id,
                       action=reports[0].action, recipients=len(reports))
        self.on_queued(queued.queue_id)
        return {"event": "dsn", "queue_id": message.queue_id, "dsn_queue_id": queued.queue_id,
                "action": reports[0].action, "recipients": [r.recipient.address for r in reports]}

    def _log(self, message: QueuedMessage, recipient: Recipient, attempt: Attempt, word: str,
             status: str, now: float) -> None:
        sent = word == "sent"
        # Not sent: say what protection policy required (its methods, in order), not as if a
        # protection had been used.
        required = ",".join(message.policy.methods) if not sent and message.policy.protects(attempt.index) \
            else None
        eventlog.event(
            log, "delivery", queue_id=message.queue_id, to=f"<{recipient.address}>", relay=attempt.relay,
            delay=f"{now - message.received_at:.2f}", dsn=status, status=word,
            protection=attempt.protection_used if sent else "none", required=required,
            tls=str(attempt.tls) if sent or attempt.tls.version else "none (nothing was sent)",
            reply=str(attempt.reply))
        metrics.DELIVERIES.labels(result=word, protection=attempt.protection_used, pool=attempt.pool).inc()
