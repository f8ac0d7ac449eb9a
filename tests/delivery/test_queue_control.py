"""The queue manager under control from outside: the CLI, a kill -9, a restart."""

from __future__ import annotations

import collections
import signal
import time
import urllib.request
from collections.abc import Callable

import aiosmtplib

from gateway import cli
from gateway.spool import QueueState
from tests.conftest import GatewayProcess, free_port, message, open_test_spool, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.delivery.test_delivery import TWO_MX, submit
from tests.polling import eventually


async def test_queue_retry_delivers_a_deferred_message_at_once(world: MailWorld) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.data_replies.append("451 4.3.0 Try again later")
    gateway = await world.gateway(retry_schedule=["1h"])
    await submit(world, gateway, ["pat@clinic.test"], "NOW")
    deferred = await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert gateway.spool.due(deferred[0], QueueState.DEFERRED) > time.time() + 3000
    source = gateway.gateway.config.source
    assert cli.main(["-c", str(source), "queue", "retry", deferred[0]]) == 0
    await eventually(lambda: sink.messages, timeout=5)
    assert sink.deliveries() == [("pat@clinic.test", "NOW")]


async def test_kill_during_delivery_loses_nothing_and_repeats_only_what_was_in_flight(
        world: MailWorld, gateway_process: Callable[..., GatewayProcess]) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    sink.hang_after = 30  # then every transaction hangs: deliveries are in flight when we kill
    per_destination = 4
    gw = gateway_process(delivery={
        "paused": False, "nameservers": [f"127.0.0.53:{world.dns_port}"], "smtp_port": world.port,
        "retry_schedule": ["1s"], "command_timeout": "60s", "data_timeout": "60s",
        "max_connections_per_destination": per_destination})
    gw.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=10)
    expected = set()
    for n in range(100):
        recipients = [f"a{n}@clinic.test", f"b{n}@clinic.test"]
        code, text = await send(client, SENDER, recipients, message(f"K{n}"))
        assert code == 250, text
        expected |= {(r, f"K{n}") for r in recipients}
    await client.quit()
    await eventually(lambda: sink.transactions > 30 + 1)
    # The 30 accepted deliveries are recorded (spool files gone); the rest hang in flight.
    watching = open_test_spool(gw.config_file)
    await eventually(lambda: sum(watching.counts().values()) <= 100 - 30)
    watching.close()
    gw.signal(signal.SIGKILL)
    gw.wait()
    spool = open_test_spool(gw.config_file)
    assert spool.ids(QueueState.ACTIVE)  # it really was killed mid-delivery
    spool.close()
    sink.hang_after = None
    gw.start()
    await eventually(lambda: expected <= set(sink.deliveries()), timeout=30)
    copies = collections.Counter(sink.deliveries())
    assert set(copies) == expected
    repeated_messages = {marker for (_, marker), count in copies.items() if count > 1}
    assert len(repeated_messages) <= per_destination  # at most what was on the connections
    spool = open_test_spool(gw.config_file)
    await eventually(lambda: not any(spool.counts().values()), timeout=10)
    spool.close()


async def test_metrics_add_up_the_delivery_process_counters(
        world: MailWorld, gateway_process: Callable[..., GatewayProcess]) -> None:
    await world.start_dns(TWO_MX)
    sink = await world.sink("127.0.0.11")
    metrics_port = free_port()
    gw = gateway_process(metrics={"listen": f"127.0.0.1:{metrics_port}"}, delivery={
        "paused": False, "nameservers": [f"127.0.0.53:{world.dns_port}"], "smtp_port": world.port})
    gw.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=10)
    code, text = await send(client, SENDER, ["pat@clinic.test"], message("METRICS"))
    assert code == 250, text
    await client.quit()
    await eventually(lambda: sink.messages)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
            return str(page.read().decode())

    sent = 'mailward_deliveries_total{pool="default",protection="none",result="sent"} 1.0'
    text = await eventually(lambda: sent in (page := scrape()) and page)
    assert 'mailward_messages_received_total{listener="127.0.0.1:' in text
    assert "mailward_queue_messages" in text
