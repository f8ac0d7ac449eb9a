"""Every Prometheus metric of Mailward, declared once with its help text (prefix ``mailward_``).

Labels carry listener names, results and rule names, never addresses or content. Queue sizes are
read from the spool directories at scrape time (a directory listing per state, as cheap as
Postfix's qshape), so they are right even while the CLI moves messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
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

DKIM_SIGNATURES = Counter(
    "mailward_dkim_signatures_total", "DKIM signatures made, by signing domain and algorithm.",
    ["domain", "algorithm"], registry=REGISTRY)
DKIM_UNSIGNED = Counter(
    "mailward_dkim_unsigned_total", "Messages sent without a DKIM signature, by reason (no_domain: "
    "no configured domain covers the From address; malformed_header).", ["reason"], registry=REGISTRY)
DKIM_FAILURES = Counter(
    "mailward_dkim_failures_total", "Signatures that failed (the delivery was deferred), by domain.",
    ["domain"], registry=REGISTRY)


class QueueCollector(Collector):
    """Queue sizes by state, read from the spool the gateway has open."""

    spool: Spool | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mailward_queue_messages", "Messages in the spool, by state.",
                                   labels=["state"])
        if self.spool is not None:
            for state, count in self.spool.counts().items():
                family.add_metric([state.value], count)
        yield family


QUEUE = QueueCollector()
REGISTRY.register(QUEUE)


def serve(host: str, port: int, spool: Spool) -> WSGIServer:
    """Start the /metrics endpoint in a background thread; returns the server (to shut down).
    With a delivery process beside this one, the counters of both processes are added up from
    PROMETHEUS_MULTIPROC_DIR (see `cli.cmd_run`)."""
    QUEUE.spool = spool
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(QUEUE)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
