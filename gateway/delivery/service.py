"""The delivery side of the gateway, built from config: resolver, SMTP connector, connection
cache, delivery agent and the scheduler that drives them.

`start` requeues what a crash left in ``active/`` (so it must run before any delivery and while
no other delivery process runs), then starts the scheduler. `stop` lets deliveries in flight
finish within the drain timeout and QUITs idle connections. With ``delivery.paused`` nothing is
delivered: messages are accepted and wait in the queue (like Postfix's ``defer_transports``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway import eventlog
from gateway.audit.events import Audit
from gateway.config import Config
from gateway.crypto.discovery import KeyDiscovery
from gateway.crypto.keyrings import Keyrings
from gateway.delivery.agent import DeliveryAgent
from gateway.delivery.client import Connector, Timeouts, TlsPolicy
from gateway.delivery.connections import ConnectionCache
from gateway.delivery.outcomes import Outcomes
from gateway.delivery.signing import DkimSigner
from gateway.memory import MemoryBudget
from gateway.message import QueuedMessage
from gateway.portal.handoff import PortalHandoff
from gateway.portal.store import open_store
from gateway.reputation.traffic import Traffic
from gateway.resolver import MxResolver
from gateway.spool import Spool
from gateway.spool.scheduler import Scheduler
from gateway.state.cluster import SharedState
from gateway.transport.peer import tls_contexts
from gateway.transport.tlscache import LearnedTls
from gateway.transport.tlspolicy import MtaSts, StsCache, TlsPolicyMap
from gateway.transport.tlsrpt import TlsReporter, TlsReportStore

log = logging.getLogger("mailward.delivery")
TLS_REPORT_INTERVAL = 3600.0  # finished days are reported within the hour after midnight UTC


class DeliveryService:
    def __init__(self, config: Config, spool: Spool, *, tls_policy: TlsPolicy | None = None,
                 audit: Audit | None = None, state: SharedState | None = None) -> None:
        self.audit = audit or Audit.off()
        delivery = config.delivery
        self.paused = delivery.paused
        self.connections = ConnectionCache(
            total=delivery.max_connections, per_destination=delivery.max_connections_per_destination,
            max_messages=delivery.max_messages_per_connection, idle_time=delivery.connection_idle_time)
        self._tls_policy = tls_policy  # fixed by tests; else built from config on each (re)load
        self._sts_cache = StsCache(delivery.mta_sts_cache_file)  # survives reloads and restarts
        self.learned = LearnedTls(delivery.tls_cache_file, float(delivery.tls_cache_ttl))
        reports = delivery.tls_reports
        self.tls_reports = TlsReportStore(reports.dir) if reports.enabled else None
        self.tls_reporter: TlsReporter | None = None
        self._reporting: asyncio.Task[None] | None = None
        self.spool = spool
        # Limits (throttling, warm-up counts) and the suppression list outlive reloads.
        self.state = state or SharedState(config)
        self._own_state = state is None
        self.suppression = self.state.open_suppression()
        self.limits = self.state.limits(queues=lambda: {state.value: count for state, (count, _, _)
                                                        in spool.usage().items()})
        self.memory = MemoryBudget()  # outlives reloads: the holders of the old agent count
        self.agent = self._agent(config, spool)
        # Through a lambda, so that a reload's new agent serves the next deliveries.
        self.scheduler = Scheduler(spool, lambda queue_id: self.agent.deliver(queue_id),
                                   max_active=delivery.max_active)

    def _agent(self, config: Config, spool: Spool) -> DeliveryAgent:
        delivery = config.delivery
        resolver = MxResolver(delivery.nameservers, delivery.smtp_port, delivery.routes,
                              timeout=min(delivery.connect_timeout, 30.0))
        connector = Connector(config.hostname, Timeouts(delivery.connect_timeout, delivery.command_timeout,
                                                        delivery.data_timeout),
                              ca_file=str(delivery.ca_file) if delivery.ca_file else None,
                              tlsa=resolver.tlsa if delivery.dane else None)
        tls_policy = self._tls_policy or TlsPolicyMap(delivery.tls_policy, MtaSts(
            resolver, port=delivery.mta_sts_port, ca_file=str(delivery.ca_file) if delivery.ca_file else None,
            cache=self._sts_cache) if delivery.mta_sts else None, routed=frozenset(delivery.routes))
        if self.tls_reports is not None:
            reports = delivery.tls_reports
            self.tls_reporter = TlsReporter(
                self.tls_reports, resolver, organization=reports.organization or config.hostname,
                contact=reports.contact, sender=reports.sender or f"tlsrpt-noreply@{config.hostname}",
                hostname=config.hostname, enqueue=self._enqueue,
                ssl_context=tls_contexts(str(delivery.ca_file) if delivery.ca_file else None)[0])
        traffic = Traffic.load(config, self.limits)
        outcomes = Outcomes(self.suppression, scope=delivery.suppression.scope,
                            sender_domains=[*config.relay.sender_domains, *config.domains])
        return DeliveryAgent(spool, config.hostname, delivery, resolver=resolver, connector=connector,
                             connections=self.connections, tls_policy=tls_policy,
                             on_queued=lambda queue_id: self.scheduler.notify([queue_id]),
                             keyrings=Keyrings.load(config.keys, self._discovery(config, resolver)),
                             tls_reports=self.tls_reports, learned=self.learned,
                             portal=self._portal(config), signer=self._signer(config), audit=self.audit,
                             traffic=traffic, suppression=self.suppression, outcomes=outcomes,
                             memory=self.memory, memory_limit=config.limits.message_memory)

    @staticmethod
    def _signer(config: Config) -> DkimSigner:
        signer = DkimSigner.load(config.domains)
        if not signer.keys:
            eventlog.event(log, "dkim_disabled", logging.WARNING,
                           note="no domains with DKIM keys: mail goes out unsigned")
            return signer
        own = [config.hostname]
        if config.portal.enabled and config.portal.branding.sender:
            own.append(config.portal.branding.sender.rpartition("@")[2])
        for domain in own:
            if not signer.covers(domain):
                eventlog.event(log, "dkim_gateway_unsigned", logging.WARNING, domain=domain,
                               note="mail the gateway writes (DSNs, notifications) from this domain "
                                    "goes unsigned: add it (or a parent) to domains with a DKIM key")
        eventlog.event(log, "dkim_keys_loaded", domains=len(signer.keys),
                       keys=sum(len(keys) for keys in signer.keys.values()))
        return signer

    def _portal(self, config: Config) -> PortalHandoff | None:
        if not config.portal.enabled:
            return None
        store = open_store(config.portal.store_dir, config.portal.key_file, create_key=True,
                           records=self.state.portal_records())
        return PortalHandoff(store, config.portal, config.hostname, self._enqueue, self.audit)

    @staticmethod
    def _discovery(config: Config, resolver: MxResolver) -> KeyDiscovery | None:
        keys = config.keys
        if not (keys.wkd or keys.dns_keys):
            return None
        ca_file = str(config.delivery.ca_file) if config.delivery.ca_file else None
        return KeyDiscovery(resolver, tls_contexts(ca_file)[0], wkd=keys.wkd, dns=keys.dns_keys,
                            revoked=keys.revoked_fingerprints, ttl=float(keys.discovery_ttl),
                            port=keys.wkd_port)

    async def _enqueue(self, message: QueuedMessage, content: bytes) -> None:
        await self.spool.store(message, content)
        self.scheduler.notify([message.queue_id])

    async def _report_tls(self) -> None:
        while True:
            if self.tls_reporter is not None:
                try:
                    await self.tls_reporter.send_due()
                except Exception:  # a reporting problem must not stop delivery
                    log.exception("event=tlsrpt_error")
            await asyncio.sleep(TLS_REPORT_INTERVAL)

    def notify(self, queue_id: str) -> None:
        self.scheduler.notify([queue_id])

    async def start(self) -> None:
        if self.paused:
            eventlog.event(log, "delivery_paused", logging.WARNING,
                           note="delivery.paused is set: messages are queued, not delivered")
            return
        await self.scheduler.start()
        if self.tls_reporter is not None:
            self._reporting = asyncio.create_task(self._report_tls())

    def reconfigure(self, config: Config, spool: Spool) -> None:
        """SIGHUP: new routes, TLS policy, pools, keys, DKIM keys, timeouts, resolver and retry
        settings for the next deliveries. Idle cached connections are closed, so that none made
        under the old routes or TLS policy is reused. Connection limits and pausing take effect
        after a restart."""
        previous = self.agent
        self.agent = self._agent(config, spool)
        self.agent.take_unsettled(previous)
        self.connections.forget_all()
        self.scheduler.max_active = config.delivery.max_active

    async def stop(self, timeout: float) -> None:
        if self._reporting is not None:
            self._reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporting
        if self.tls_reports is not None:
            self.tls_reports.flush()
        self.learned.save()
        if not self.paused:
            await self.scheduler.stop(timeout)
        await self.connections.close()
        if self._own_state:
            await self.state.close()
