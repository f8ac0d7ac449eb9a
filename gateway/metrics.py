"""Every Prometheus metric of Mailward, declared once with its help text (prefix ``mailward_``).

Labels carry listener names, results and rule names, never addresses or content. Queue sizes are
read from the spool directories at scrape time (a directory listing per state, as cheap as
Postfix's qshape), so they are right even while the CLI moves messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
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
    """Start the /metrics endpoint in a background thread; returns the server (to shut down)."""
    QUEUE.spool = spool
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
