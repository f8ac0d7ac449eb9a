"""Metrics scraped over HTTP move as messages are received, signed and delivered; /healthz
answers; the shipped alert rules and dashboard name only metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from tests.conftest import free_port, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.dkimverify import make_key
from tests.polling import eventually
from tests.stages.dlp import builders as b

ROOT = Path(__file__).resolve().parent.parent.parent


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    def get() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as page:
            return page.status, page.read().decode()
    return await asyncio.to_thread(get)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scraped_counters_move_with_the_traffic(world: MailWorld, tmp_path: Path) -> None:
    key = make_key(tmp_path, "hospital.test", "s1")
    await world.start_dns({("clinic.test", "MX"): ["10 mx.clinic.test."],
                           ("mx.clinic.test", "A"): ["127.0.0.22"], **dict([key.dns])})
    sink = await world.sink("127.0.0.22", tls_name="mx.clinic.test")
    port = free_port()
    gateway = await world.gateway({"metrics": {"listen": f"127.0.0.1:{port}"},
                                   "domains": {"hospital.test": {"dkim": [key.config]}}})
    assert await scrape(port, "/healthz") == (200, "ok\n")
    before = samples((await scrape(port))[1])
    for i in range(3):
        code, _ = await send(gateway.client(), SENDER, ["pat@clinic.test"],
                             b.message(f"note {i}", sender=SENDER, to="pat@clinic.test"))
        assert code == 250
    await eventually(lambda: len(sink.messages) == 3)
    after = samples((await scrape(port))[1])

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mailward_messages_received_total", listener="127.0.0.1:0", relay="network") == 3
    assert moved("mailward_deliveries_total", result="sent", protection="tls-verified", pool="default") == 3
    assert moved("mailward_dkim_signatures_total", domain="hospital.test", algorithm="rsa-sha256") == 3
    assert moved("mailward_tls_sessions_total", version=sink.messages[0].tls_version or "",
                 verification="verified") >= 1
    assert moved("mailward_delivery_duration_seconds_count") == 3
    assert ("mailward_queue_messages", (("state", "deferred"),)) in after
    assert ("mailward_spool_bytes", (("state", "incoming"),)) in after
    assert ("mailward_queue_oldest_message_age_seconds", (("state", "deferred"),)) in after


def known_metric_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():  # a labelled metric has no samples until used
        names.update(family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum"))
    # Collectors that read the spool yield their families even without one.
    return names | {"mailward_queue_messages", "mailward_spool_bytes",
                    "mailward_queue_oldest_message_age_seconds"}


def test_alert_rules_and_dashboard_use_only_real_metrics() -> None:
    rules = yaml.safe_load((ROOT / "ops" / "prometheus-alerts.yaml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert {rule["alert"] for group in rules["groups"] for rule in group["rules"]} >= {
        "MailwardQueueGrowing", "MailwardBounceRateHigh", "MailwardDeferredTooOld",
        "MailwardTlsVerificationFailures"}
    known = known_metric_names()
    for expression in expressions:
        for name in re.findall(r"\bmailward_[a-z_]+", expression):
            assert name in known, (name, expression)
