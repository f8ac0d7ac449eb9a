"""Every Prometheus metric of Mailward, declared once with its help text (prefix ``mailward_``).

Labels carry listener names, results and rule names, never addresses or content. Queue sizes are
read from the spool directories at scrape time (a directory listing per state, as cheap as
Postfix's qshape), so they are right even while the CLI moves messages.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.spool import Spool

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_RECEIVED = Counter(
    "mailward_messages_received_total", "Messages accepted (250) and queued, by listener and "
    "how the client was allowed to relay.", ["listener", "relay"], registry=REGISTRY)
SMTP_REJECTIONS = Counter(
    "mailward_smtp_rejections_total", "Commands refused at ingress, by reason.",
    ["listener", "reason"], registry=REGISTRY)
AUTH_FAILURES = Counter(
    "mailward_auth_failures_total", "Failed SMTP AUTH attempts, by listener and reason (wrong: the "
    "credentials were checked; locked: refused unchecked, too many failures).",
    ["listener", "reason"], registry=REGISTRY)
DELIVERIES = Counter(
    "mailward_deliveries_total", "Delivery attempts per recipient, by result (sent, deferred, "
    "bounced, expired), protection (tls-verified, tls, none) and egress pool.",
    ["result", "protection", "pool"], registry=REGISTRY)
DELIVERY_DURATION = Histogram(
    "mailward_delivery_duration_seconds", "Time from acceptance until every recipient of a "
    "message was final.", registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 432000))

DLP_MATCHES = Counter(
    "mailward_dlp_matches_total", "Messages whose content matched a DLP rule, by rule name.",
    ["rule"], registry=REGISTRY)
DLP_ACTIONS = Counter(
    "mailward_dlp_actions_total", "DLP decisions, by the action taken on the message.",
    ["action"], registry=REGISTRY)
DLP_SCAN_ERRORS = Counter(
    "mailward_dlp_scan_errors_total", "Scans that did not finish (timeout, scan_failed); the "
    "policy's on_error decided.", ["reason"], registry=REGISTRY)
DLP_SCAN_DURATION = Histogram(
    "mailward_dlp_scan_seconds", "Time to extract and scan one message.", registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
PORTAL_EVENTS = Counter(
    "mailward_portal_events_total", "Secure portal events: stored, code_sent, code_failed, locked, "
    "viewed, downloaded, replied, expired, revoked.", ["event"], registry=REGISTRY)

DELIVERY_FAILURES = Counter(
    "mailward_delivery_failures_total", "4xx/5xx results per recipient, by class (bad_mailbox, "
    "mailbox_full, policy, throttled, dns, tls, other) and result (deferred, bounced, expired).",
    ["class", "result"], registry=REGISTRY)
SENDER_OUTCOMES = Counter(
    "mailward_sender_outcomes_total", "Results per recipient by egress pool and sender domain "
    "(configured ones; others are \"other\"): sent, deferred, bounced, expired, dropped; with "
    "complaints, the base of bounce and complaint rates.", ["pool", "sender_domain", "result"],
    registry=REGISTRY)
COMPLAINTS = Counter(
    "mailward_complaints_total", "Feedback loop complaints (ARF reports), by egress pool and sender "
    "domain.", ["pool", "sender_domain"], registry=REGISTRY)
SUPPRESSED = Counter(
    "mailward_suppressions_total", "Addresses added to the suppression list, by reason (bounce, "
    "complaint, unsubscribe, manual).", ["reason"], registry=REGISTRY)
SUPPRESSED_DROPS = Counter(
    "mailward_suppressed_recipients_total", "Recipients not attempted because they are suppressed.",
    registry=REGISTRY)
TLS_SESSIONS = Counter(
    "mailward_tls_sessions_total", "Outbound SMTP connections, by TLS version (none without TLS) "
    "and verification (verified, dane, unverified, none).", ["version", "verification"],
    registry=REGISTRY)
TLS_FAILURES = Counter(
    "mailward_tls_failures_total", "Outbound connections that could not get the TLS their "
    "requirement asked for (no STARTTLS, a certificate that does not verify, a failed handshake), "
    "by the requirement (encrypt, verify).", ["required"], registry=REGISTRY)
DKIM_SIGNATURES = Counter(
    "mailward_dkim_signatures_total", "DKIM signatures made, by signing domain and algorithm.",
    ["domain", "algorithm"], registry=REGISTRY)
DKIM_UNSIGNED = Counter(
    "mailward_dkim_unsigned_total", "Messages sent without a DKIM signature, by reason (no_domain: "
    "no configured domain covers the From address; malformed_header).", ["reason"], registry=REGISTRY)
DKIM_FAILURES = Counter(
    "mailward_dkim_failures_total", "Signatures that failed (the delivery was deferred), by domain.",
    ["domain"], registry=REGISTRY)
CLUSTER_STATE_UP = Gauge(
    "mailward_cluster_state_up", "In a cluster: 1 while this node reaches the shared store (redis: "
    "limits and counters are shared; postgres: suppression, portal, audit copy), 0 while it works on "
    "its local fallback.", ["store"], registry=REGISTRY, multiprocess_mode="livemin")
CLUSTER_FALLBACKS = Counter(
    "mailward_cluster_fallbacks_total", "Times this node lost a shared store and fell back (redis: "
    "to its share of each limit; postgres: audit waits locally, suppression lookups defer).",
    ["store"], registry=REGISTRY)
NODE_INFO = Gauge(
    "mailward_node_info", "1, labelled with this node's cluster node_id.", ["node_id"],
    registry=REGISTRY, multiprocess_mode="livemax")


class QueueCollector(Collector):
    """Queue sizes by state, read from the spool the gateway has open."""

    spool: Spool | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily("mailward_queue_messages", "Messages in the spool, by state.",
                                     labels=["state"])
        size = GaugeMetricFamily("mailward_spool_bytes", "Bytes of spool files (encrypted messages), "
                                 "by state.", labels=["state"])
        oldest = GaugeMetricFamily("mailward_queue_oldest_message_age_seconds", "Age of the oldest "
                                   "message in each state (0 when empty).", labels=["state"])
        if self.spool is not None:
            now = time.time()
            for state, (count, total, arrived) in self.spool.usage().items():
                messages.add_metric([state.value], count)
                size.add_metric([state.value], total)
                oldest.add_metric([state.value], max(0.0, now - arrived) if arrived else 0.0)
        yield from (messages, size, oldest)


QUEUE = QueueCollector()
REGISTRY.register(QUEUE)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def spool_problem(directory: os.PathLike[str] | str, min_free: int) -> str | None:
    """Why the spool cannot take mail now (not writable, disk nearly full), or None."""
    if not os.access(directory, os.W_OK):
        return "spool not writable"
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        return f"spool unreadable: {exc.strerror}"
    free = stats.f_bavail * stats.f_frsize
    if free < min_free:
        return f"spool disk has {free} bytes free, below spool.min_free ({min_free})"
    return None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds are not events


def serve(host: str, port: int, spool: Spool, spool_min_free: int = 0) -> WSGIServer:
    """Start ``/metrics`` and ``/healthz`` in a background thread; returns the server (to shut
    down). With a delivery process beside this one, the counters of both processes are added up
    from PROMETHEUS_MULTIPROC_DIR (see `cli.cmd_run`). ``/healthz`` answers 200 while the spool
    directory is writable and its disk has `spool_min_free` bytes free, else 503 with the reason."""
    QUEUE.spool = spool
    min_free = int(spool_min_free)
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(QUEUE)
    exposition = make_wsgi_app(registry)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            problem = spool_problem(spool.directory, min_free)
            start_response("503 Service Unavailable" if problem else "200 OK",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [(problem or "ok").encode() + b"\n"]
        result: Iterable[bytes] = exposition(environ, start_response)
        return result

    server = make_server(host, port, application, _Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
