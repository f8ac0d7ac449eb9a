"""The running gateway: build the components from config, serve, reload on SIGHUP, drain on SIGTERM.

Start-up order matters: the spool is opened and recovered (half-written files removed, messages
that were active at a crash requeued) *before* any listener accepts a connection.

Reload swaps in a complete new set of ingress settings and TLS context, or nothing: a config that
fails validation is logged and the running one stays. Listener addresses are bound at start; a
change to them is reported and needs a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

from aiohttp import web

from gateway import certs, eventlog, metrics, sdnotify
from gateway.audit import reader as audit_reader
from gateway.audit.events import Audit
from gateway.audit.link import AuditLinkServer, inherited_fd
from gateway.audit.log import AuditLog
from gateway.audit.shipper import AuditShipper
from gateway.audit.webhooks import WebhookDispatcher
from gateway.config import Config, ListenerConfig, load_config
from gateway.delivery.service import DeliveryService
from gateway.errors import MailwardError
from gateway.ingress.feedback import Feedback, OneClick
from gateway.ingress.handler import AcceptedHook, IngressHandler, IngressSettings
from gateway.ingress.httpapi import SendLimits
from gateway.ingress.protocol import ConnectionTracker, GatewaySMTP
from gateway.ingress.relay import RelayPolicy
from gateway.ingress.sendapi import SendApi
from gateway.ingress.users import UserStore
from gateway.lifeline import die_with_parent
from gateway.memory import settle_heap, tune_allocator
from gateway.message import QueuedMessage
from gateway.pipeline import Pipeline
from gateway.portal.handoff import PortalHandoff
from gateway.portal.passwords import RecipientPasswords
from gateway.portal.store import PortalStore, open_store
from gateway.portal.web import PortalApp
from gateway.reputation.traffic import unsubscribe_links
from gateway.spool import Spool, open_spool
from gateway.spool.wakeup import BatchingWaker
from gateway.stages.dlp.policy import Policies
from gateway.stages.dlp.scanpool import ScanPool
from gateway.stages.dlp.stage import DlpStage, dlp_settings, policies_directory
from gateway.state.cluster import SharedState
from gateway.statusapi import StatusApi
from gateway.workers import ChildProcess, DeliveryProcess

log = logging.getLogger("mailward")
PORTAL_SWEEP_INTERVAL = 3600.0
AUDIT_PRUNE_INTERVAL = 86400.0


@dataclass(frozen=True)
class _Loaded:
    """Everything derived from one config, built before it replaces the running one."""

    config: Config
    settings: IngressSettings
    tls_context: ssl.SSLContext
    policies: Policies
    dlp: DlpStage


def _build(config: Config, scan_pool: ScanPool) -> _Loaded:
    dlp = DlpStage(dlp_settings(config), scan_pool)
    own_relay = {listener.label: RelayPolicy.from_config(config.relay, listener.relay)
                 for listener in config.listeners if listener.relay is not None}
    settings = IngressSettings(hostname=config.hostname, limits=config.limits,
                               relay=RelayPolicy.from_config(config.relay), listener_relay=own_relay,
                               users=UserStore(config.relay.users_file),
                               pipeline=Pipeline((dlp,)), pools=frozenset(config.delivery.pools),
                               pool_header=config.delivery.pool_selection.header)
    return _Loaded(config, settings, certs.server_context(config), dlp.settings.policies, dlp)


Role = Literal["all", "ingest", "delivery", "ingest-worker"]
PORTS_ENV = "MAILWARD_LISTEN_PORTS"  # the ports the main process bound, for ingest workers


class Gateway:
    """One gateway process. Role "all" accepts and delivers in this process; "ingest" accepts and
    runs a `DeliveryProcess` beside it; "delivery" is that process (no listeners)."""

    def __init__(self, config: Config, *, on_accepted: AcceptedHook | None = None,
                 role: Role = "all") -> None:
        # Scan workers outlive reloads (a reload swaps the policies they are sent with).
        self.scan_pool = ScanPool(config.dlp.workers if role != "delivery" else 0,
                                  inline_max=config.dlp.inline_max)
        self._loaded = _build(config, self.scan_pool)
        self._on_accepted = on_accepted
        self.role = role
        self.spool: Spool | None = None
        self.handler: IngressHandler | None = None
        self.delivery: DeliveryService | None = None
        self._delivery_process: DeliveryProcess | None = None
        self._waker: BatchingWaker | None = None
        # Each ingest process enforces its share of the connection limit.
        self.tracker = ConnectionTracker(*_connection_shares(config))
        self._servers: list[asyncio.Server] = []
        self._metrics_server: WSGIServer | None = None
        self._portal_runner: web.AppRunner | None = None
        self._portal_sweeper: asyncio.Task[None] | None = None
        self._audit_pruner: asyncio.Task[None] | None = None
        self._audit_link: AuditLinkServer | None = None  # in the main process: the children's writer
        self.webhooks: WebhookDispatcher | None = None
        self._shipper: AuditShipper | None = None
        self._api_runner: web.AppRunner | None = None
        self._console_runner: web.AppRunner | None = None
        self._ingest_workers: list[ChildProcess] = []
        self.feedback: Feedback | None = None
        self.state: SharedState | None = None
        self._stopping = asyncio.Event()
        self.audit = Audit.off()

    @property
    def config(self) -> Config:
        return self._loaded.config

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener, in config order (port 0 -> the real port)."""
        return [server.sockets[0].getsockname()[:2] for server in self._servers]

    async def start(self) -> None:
        config = self.config
        # First: a node refuses to run against a cluster database whose schema it does not know.
        self.state = SharedState.open(config)
        self.spool = open_spool(config.spool, create_key=self.role != "delivery")
        link_fd = inherited_fd() if self.role in ("delivery", "ingest-worker") else None
        if link_fd is not None:  # the parent writes the audit log for us
            self.audit = Audit.remote(config.audit, link_fd)
        else:
            self.audit = Audit.open(config.audit, create_key=self.role != "delivery")
        if self.role in ("all", "ingest") and isinstance(self.audit.log, AuditLog):
            # The main process writes the log (for its children too), so it prunes it.
            self._audit_pruner = asyncio.create_task(self._prune_audit())
            if self.role == "ingest":
                self._audit_link = AuditLinkServer(self.audit.log)
        if self.role != "delivery":
            # Before the delivery side starts: it reads the unsubscribe key this may create.
            self.feedback = self._feedback(config)
        if self.role in ("all", "ingest"):
            # Before listening: nobody else writes incoming/ yet (ingest workers start later).
            eventlog.event(log, "spool_recovered", unfinished_writes=self.spool.recover_writes())
        if self.role in ("all", "delivery"):
            # Before delivering: nobody else touches active/ (the one delivery process is us).
            requeued, quarantined, orphans = self.spool.recover_active()
            self.spool.track_journals()  # we alone write journals from here on
            eventlog.event(log, "spool_recovered", requeued=requeued, quarantined=quarantined,
                           orphan_journals=orphans)
            self.delivery = DeliveryService(config, self.spool, audit=self.audit, state=self.state)
            await self.delivery.start()
            copy = self.state.audit_copy() if config.audit.enabled else None
            if copy is not None:
                # In a cluster the delivery side ships the audit log (it only reads the files),
                # leaving the CPU of the process that writes them to ingest.
                self._shipper = AuditShipper(config.audit.dir, copy, config.cluster.node_id)
                self.audit.observers.append(self._shipper.wake)
                self._shipper.start()
            if config.webhooks:
                # Cursors are positions in the audit log, so they live beside it.
                self.webhooks = WebhookDispatcher(
                    list(config.webhooks), config.audit.dir, config.audit.dir / ".webhooks",
                    ssl_context=_client_tls(config), copy=self.state.audit_copy(),
                    lease=self.state.lease("webhooks"))
                self.audit.observers.append(self.webhooks.wake)
                self.webhooks.start()
            if self.role == "delivery":
                return
        else:
            self._waker = BatchingWaker(self.spool.directory)
            if self.role == "ingest":
                self._delivery_process = DeliveryProcess(config, audit_link=self._audit_link)
                await self._delivery_process.start()
        self._report_policies(self._loaded)
        # The detectors are built before the first message (a second or so): its scan on the
        # event loop would overrun its 50 ms and go to a worker for nothing.
        await asyncio.get_running_loop().run_in_executor(None, self._loaded.dlp.prepare)
        self.handler = IngressHandler(self._loaded.settings, self.spool, self._accepted, audit=self.audit,
                                      feedback=self.feedback)
        await self._listen(config)
        if self.role == "ingest-worker":
            return
        if config.ingest_processes > 1:
            ports = ",".join(str(port) for _, port in self.addresses)
            self._ingest_workers = [ChildProcess(config, "ingest-worker", {PORTS_ENV: ports},
                                                 audit_link=self._audit_link)
                                    for _ in range(config.ingest_processes - 1)]
            for worker in self._ingest_workers:
                await worker.start()
        if config.metrics.listen is not None:
            self._metrics_server = metrics.serve(config.metrics.listen.host, config.metrics.listen.port,
                                                 self.spool, int(config.spool.min_free))
        if config.portal.enabled:
            await self._start_portal()
        if config.console.listen is not None:
            await self._start_console()
        if config.api.listen is not None:
            assert self.state is not None
            shared_tokens = self.state.api_tokens()
            self._api_runner = web.AppRunner(StatusApi(config.api, self.spool, self.audit.directory,
                                                       self._send_api(config),
                                                       shared_tokens.load if shared_tokens else None
                                                       ).application(),
                                             access_log=None)
            await self._api_runner.setup()
            api_tls = certs.https_context(config.api.tls_cert_file, config.api.tls_key_file) \
                if config.api.tls_cert_file is not None and config.api.tls_key_file is not None else None
            await web.TCPSite(self._api_runner, config.api.listen.host, config.api.listen.port,
                              ssl_context=api_tls).start()
            eventlog.event(log, "api_listening", address=config.api.listen,
                           scheme="https" if api_tls is not None else "http")
        sdnotify.ready("accepting mail on " + ", ".join(f"{h}:{p}" for h, p in self.addresses))

    def _send_api(self, config: Config) -> SendApi | None:
        """POST /api/v1/messages, through the same ingress handler as SMTP."""
        if self.handler is None:
            return None
        assert self.state is not None
        suppression = self.state.open_suppression()

        def suppressed(addresses: list[str], sender_domain: str) -> set[str]:
            # In the caller's thread. The list sees what other processes add at once (SQLite's
            # data_version; the cluster's change notices).
            return {a for a in addresses if suppression.find(a, sender_domain) is not None}

        api = config.api
        return SendApi(self.handler, SendLimits(api.max_recipients, int(api.max_request_size),
                                                api.requests_per_minute), api.state_dir, suppressed)

    def _feedback(self, config: Config) -> Feedback | None:
        """The gateway's own addresses (complaint reports, mailto: unsubscribes), if configured."""
        links = unsubscribe_links(config)
        if config.feedback.fbl_address is None and links is None:
            return None
        assert self.state is not None
        return Feedback(hostname=config.hostname, fbl_address=config.feedback.fbl_address,
                        unsubscribe_local_part=config.feedback.unsubscribe_local_part, links=links,
                        suppression=self.state.open_suppression(),
                        sender_domains=[*config.relay.sender_domains, *config.domains],
                        pool_of_ip={ip.address: name for name, pool in config.delivery.pools.items()
                                    for ip in pool.ips})

    async def _listen(self, config: Config) -> None:
        """Bind the listeners; with several ingest processes, all bind the same ports and the
        kernel spreads new connections over them (SO_REUSEPORT). Workers take the ports the main
        process got (which matters for port 0)."""
        shared = config.ingest_processes > 1
        given = [int(p) for p in os.environ.get(PORTS_ENV, "").split(",") if p] \
            if self.role == "ingest-worker" else []
        for index, listener in enumerate(config.listeners):
            port = given[index] if index < len(given) else listener.port
            server = await asyncio.get_running_loop().create_server(
                lambda listener=listener: self._protocol(listener),
                host=listener.address, port=port, reuse_address=True, reuse_port=shared or None,
                backlog=1024)
            self._servers.append(server)
        for listener, (host, port) in zip(config.listeners, self.addresses, strict=True):
            eventlog.event(log, "listening", listener=listener.label, address=f"{host}:{port}",
                           starttls=listener.starttls, auth=listener.auth, pid=os.getpid())

    async def _start_portal(self) -> None:
        """The recipients' web app on `portal.listen`, with its own certificate or behind a TLS
        reverse proxy (see the README); it shares the portal store with delivery."""
        portal = self.config.portal
        assert self.state is not None
        store = open_store(portal.store_dir, portal.key_file, create_key=True,
                           records=self.state.portal_records())
        hashes = self.state.portal_password_hashes()
        handoff = PortalHandoff(store, portal, self.config.hostname, self._enqueue_generated)
        one_click = OneClick(self.feedback, self.audit.write) \
            if self.feedback is not None and self.feedback.links is not None else None
        app = PortalApp(store, portal, send_code=handoff.send_code, send_reply=handoff.send_reply,
                        send_notice=handoff.send_notice, audit=self.audit, unsubscribe=one_click,
                        passwords=RecipientPasswords(hashes) if hashes is not None else None).application()
        self._portal_runner = web.AppRunner(app, access_log=None)
        await self._portal_runner.setup()
        context = None
        if portal.tls_cert_file is not None and portal.tls_key_file is not None:
            context = certs.https_context(portal.tls_cert_file, portal.tls_key_file)
        site = web.TCPSite(self._portal_runner, portal.listen.host, portal.listen.port, ssl_context=context)
        await site.start()
        self._portal_sweeper = asyncio.create_task(self._sweep_portal(store))
        eventlog.event(log, "portal_listening", address=portal.listen, base_url=portal.base_url)

    async def _start_console(self) -> None:
        """The compliance console on `console.listen` (docs/console.md)."""
        # Imported here: a gateway without the console does not carry it (nor TOTP and QR code).
        from gateway.console.users import ConsoleUsers
        from gateway.console.web import ConsoleApp

        console = self.config.console
        assert console.listen is not None and self.spool is not None
        # Secure cookies over its own HTTPS, or behind the TLS proxy (trusted_proxies).
        https = console.tls_cert_file is not None or bool(console.trusted_proxies)
        app = ConsoleApp(self.config, ConsoleUsers(console.users_file), self.spool, self.audit,
                         released=self._wake_delivery, https=https).application()
        self._console_runner = web.AppRunner(app, access_log=None)
        await self._console_runner.setup()
        context = certs.https_context(console.tls_cert_file, console.tls_key_file) \
            if console.tls_cert_file is not None and console.tls_key_file is not None else None
        await web.TCPSite(self._console_runner, console.listen.host, console.listen.port,
                          ssl_context=context).start()
        eventlog.event(log, "console_listening", address=console.listen,
                       scheme="https" if context is not None else "http")

    def _wake_delivery(self, queue_id: str) -> None:
        """A message put back in incoming/ (released from hold): deliver it now."""
        if self.delivery is not None:
            self.delivery.notify(queue_id)
        elif self._waker is not None:
            self._waker.add(queue_id)

    async def _sweep_portal(self, store: PortalStore) -> None:
        """Delete expired portal messages for good, hourly (they are refused at once anyway)."""
        while True:
            expired = await asyncio.get_running_loop().run_in_executor(None, store.expire)
            if expired:
                metrics.PORTAL_EVENTS.labels("expired").inc(len(expired))
                eventlog.event(log, "portal_expired", messages=len(expired))
                await self.audit.write(*({"event": "portal_expired", "queue_id": None, "portal_id": portal_id}
                                         for portal_id in expired))
            await asyncio.sleep(PORTAL_SWEEP_INTERVAL)

    async def _prune_audit(self) -> None:
        """Daily: delete audit files past `audit.retention` (the process that writes the log)."""
        log_file = self.audit.log
        while isinstance(log_file, AuditLog):
            try:
                deleted = await asyncio.get_running_loop().run_in_executor(
                    None, audit_reader.prune, log_file, float(self.config.audit.retention), time.time())
            except OSError as exc:
                eventlog.event(log, "audit_prune_failed", logging.ERROR, error=str(exc))
            else:
                if deleted:
                    eventlog.event(log, "audit_pruned", files=len(deleted))
            await asyncio.sleep(AUDIT_PRUNE_INTERVAL)

    async def _enqueue_generated(self, message: QueuedMessage, content: bytes) -> None:
        """Queue a message the gateway writes itself (portal passcodes and replies)."""
        assert self.spool is not None
        await self.spool.store(message, content)
        self._accepted(message)

    def _accepted(self, message: QueuedMessage) -> None:
        self._wake_delivery(message.queue_id)
        if self._on_accepted is not None:
            self._on_accepted(message)

    def _protocol(self, listener: ListenerConfig) -> GatewaySMTP:
        loaded = self._loaded  # read at accept time, so a reload applies to new connections
        assert self.handler is not None
        limits = loaded.config.limits
        return GatewaySMTP(
            self.handler, listener, loaded.tls_context if listener.starttls != "off" else None,
            self.tracker, hostname=loaded.config.hostname,
            data_size_limit=limits.max_message_size, command_timeout=limits.command_timeout,
            data_timeout=limits.data_timeout, max_errors=limits.max_errors,
            idle_before_mail=limits.idle_before_mail)

    def reload(self) -> bool:
        """Re-read the config file; apply it whole, or keep the running one and say why."""
        source = self.config.source
        sdnotify.reloading()
        try:
            loaded = _build(load_config(source) if source is not None else self.config, self.scan_pool)
        except MailwardError as exc:
            eventlog.event(log, "reload_refused", logging.ERROR, error=str(exc).replace("\n", "; "))
            sdnotify.notify("READY=1", "STATUS=reload refused: the running configuration stays")
            return False
        if loaded.config.listeners != self.config.listeners:
            eventlog.event(log, "reload_listeners_unchanged", logging.WARNING,
                           note="listener changes take effect after a restart")
            loaded = dataclasses.replace(loaded, config=_keep_listeners(loaded.config, self.config))
        self._loaded = loaded
        if self.handler is not None:  # the delivery process has no listeners
            self._report_policies(loaded)
            loaded.dlp.prepare()
            self.handler.settings = loaded.settings
        if self.delivery is not None and self.spool is not None:
            self.delivery.reconfigure(loaded.config, self.spool)
        settle_heap()
        children = [*self._ingest_workers, *([self._delivery_process] if self._delivery_process else [])]
        for child in children:
            child.reload()  # each reads the same file and decides for itself
        self.tracker.max_total, self.tracker.max_per_ip, self.tracker.reserved = \
            _connection_shares(loaded.config)
        eventlog.event(log, "reloaded", config=source or "embedded-defaults")
        sdnotify.notify("READY=1", "STATUS=configuration reloaded")
        return True

    @staticmethod
    def _report_policies(loaded: _Loaded) -> None:
        config = loaded.config
        rules = sum(len(f.rules) for f in loaded.policies.files)
        if not config.dlp.enabled:
            eventlog.event(log, "dlp_disabled", logging.WARNING, note="messages are not scanned")
        elif not rules:
            eventlog.event(log, "no_policies", logging.WARNING, dir=policies_directory(config),
                           note="no DLP rules: messages are delivered without policy")
        else:
            eventlog.event(log, "policies_loaded", files=len(loaded.policies.files), rules=rules)

    def stop(self) -> None:
        self._stopping.set()

    async def serve_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`), then drain. SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        settle_heap()  # set up for good now; a signal meanwhile finds its handler
        try:
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        await self.drain()

    async def drain(self) -> None:
        """Stop accepting; let open transactions and deliveries finish within drain_timeout;
        close the rest (unfinished deliveries stay queued)."""
        sdnotify.stopping()
        for server in self._servers:
            server.close()  # no new connections from here on
        # The other ingest processes drain their own sessions at the same time.
        worker_stops = [asyncio.create_task(worker.stop(self.config.limits.drain_timeout))
                        for worker in self._ingest_workers]
        open_sessions = list(self.tracker.open)
        eventlog.event(log, "draining", sessions=len(open_sessions))
        for protocol in open_sessions:
            protocol.begin_drain()
        try:
            await asyncio.wait_for(self.tracker.wait_empty(), self.config.limits.drain_timeout)
        except TimeoutError:
            eventlog.event(log, "drain_timeout", logging.WARNING, sessions=len(self.tracker.open))
        for protocol in list(self.tracker.open):
            if protocol.transport is not None:
                protocol.transport.close()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.gather(*worker_stops)
        if self.delivery is not None:
            await self.delivery.stop(self.config.limits.drain_timeout)
        if self._delivery_process is not None:
            await self._delivery_process.stop(self.config.limits.drain_timeout)
        if self._waker is not None:
            self._waker.close()
        self.scan_pool.close()
        if self.webhooks is not None:
            await self.webhooks.stop()
        for task in (self._portal_sweeper, self._audit_pruner):
            if task is not None:
                task.cancel()
        for runner in (self._portal_runner, self._api_runner, self._console_runner):
            if runner is not None:
                await runner.cleanup()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.spool is not None:
            self.spool.close()
        if self._audit_link is not None:
            await self._audit_link.close()
        if self._shipper is not None:
            await self._shipper.stop()
        self.audit.close()
        if self.state is not None:
            await self.state.close()
        eventlog.event(log, "stopped", unfinished_sessions=len(self.tracker.open))


def _client_tls(config: Config) -> ssl.SSLContext:
    """HTTPS to webhook receivers: the system's trust anchors plus `delivery.ca_file`."""
    context = ssl.create_default_context()
    if config.delivery.ca_file is not None:
        context.load_verify_locations(cafile=str(config.delivery.ca_file))
    return context


def _keep_listeners(new: Config, running: Config) -> Config:
    """`new` with the listeners that are actually bound (those need a restart to change)."""
    replaced = dataclasses.replace(new, listeners=running.listeners)
    object.__setattr__(replaced, "source", new.source)
    return replaced


def _connection_shares(config: Config) -> tuple[int, int, int]:
    """This process's share of limits.max_connections, max_connections_per_ip and
    reserved_connections."""
    processes = config.ingest_processes
    limits = config.limits
    return (-(-limits.max_connections // processes), -(-limits.max_connections_per_ip // processes),
            -(-limits.reserved_connections // processes))


def uses_delivery_process(config: Config) -> bool:
    return config.delivery.separate_process and not config.delivery.paused


def check_addresses(config: Config) -> None:
    """Every address the gateway will listen on can be bound now; else a MailwardError that
    names it ("cannot listen on 127.0.0.1:2525: address already in use")."""
    wanted = [(f"{listener.address}:{listener.port}", listener.address, listener.port)
              for listener in config.listeners if listener.port]
    for name, address in (("metrics.listen", config.metrics.listen),
                          ("console.listen", config.console.listen),
                          ("portal.listen", config.portal.listen if config.portal.enabled else None),
                          ("api.listen", config.api.listen)):
        if address is not None:
            wanted.append((f"{address.host}:{address.port} ({name})", address.host, address.port))
    for label, host, port in wanted:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise MailwardError(f"cannot listen on {label}: {reason}") from None


async def run(config: Config, role: Role | None = None) -> int:
    """`mailward run`: serve in the foreground until SIGTERM (`role` "delivery" is the child)."""
    tune_allocator()
    if role in ("delivery", "ingest-worker"):
        die_with_parent()
    elif config.source is None:
        print("mailward: no config file found; running on embedded development defaults "
              "(127.0.0.1:2525, relay for 127.0.0.0/8, state under ./var)", file=sys.stderr)
    if role is None:
        role = "ingest" if uses_delivery_process(config) else "all"
        check_addresses(config)  # before any child process starts: one clear line, exit 1
    gateway = Gateway(config, role=role)
    await gateway.start()
    await gateway.serve_until_stopped()
    return 0
