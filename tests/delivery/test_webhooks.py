"""Webhooks: a receiver sees each event once with a valid signature, and gets the events of a
time it was down after the gateway restarts."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit.webhooks import signature
from tests.conftest import free_port, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.stages.dlp import builders as b

SECRET = b"s3cret-for-tests"


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp, _, given = request.headers["X-Mailward-Signature"].partition(",v1=")
        expected = hmac.new(SECRET, timestamp[2:].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        event = json.loads(body)
        assert event["id"] == request.headers["Webhook-Id"]
        self.ids.append(event["id"])
        self.events.append(event)
        return web.Response(status=204)

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def receiving_webhooks(tmp_path: Path, events: list[str],
                             name: str) -> tuple[Receiver, int, dict[str, Any]]:
    """A started receiver, its port, and the `webhooks` entry that sends to it (secret file 0600)."""
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    port = free_port()
    receiver = Receiver()
    await receiver.start(port)
    return receiver, port, {"url": f"http://127.0.0.1:{port}/hook", "secret_file": str(secret),
                            "events": events, "name": name}


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    assert signature(b"k", 1700000000, b"{}") == \
        "t=1700000000,v1=" + hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()


async def test_each_event_arrives_once_signed_and_survives_a_restart_while_the_receiver_is_down(
        world: MailWorld, tmp_path: Path, start_gateway: Any) -> None:
    await world.start_dns({("clinic.test", "MX"): ["10 mx.clinic.test."],
                           ("mx.clinic.test", "A"): ["127.0.0.21"]})
    sink = await world.sink("127.0.0.21")
    receiver, port, hook = await receiving_webhooks(tmp_path, ["received", "delivered"], "test")
    settings = {"webhooks": [hook]}
    gateway = await world.gateway(settings)

    async def submit(count: int, first: int) -> None:
        for i in range(first, first + count):
            code, _ = await send(gateway.client(), SENDER, ["pat@clinic.test"],
                                 b.message(f"note {i}", sender=SENDER, to="pat@clinic.test"))
            assert code == 250

    await submit(3, 0)
    await eventually(lambda: len(sink.messages) == 3 and len(receiver.events) == 6)
    assert sorted(e["type"] for e in receiver.events) == ["delivered"] * 3 + ["received"] * 3
    assert len(set(receiver.ids)) == 6 and receiver.bad_signatures == 0
    delivered = next(e for e in receiver.events if e["type"] == "delivered")
    assert delivered["data"]["recipient"] == "pat@clinic.test" and "hash" not in delivered["data"]

    # The receiver goes down; two more messages are sent; the gateway restarts; it comes back.
    await receiver.stop()
    await submit(2, 3)
    await eventually(lambda: len(sink.messages) == 5)
    await gateway.gateway.drain()
    receiver = Receiver()
    await receiver.start(port)
    await world.gateway(settings)
    await eventually(lambda: len(receiver.events) == 4)
    assert sorted(e["type"] for e in receiver.events) == ["delivered"] * 2 + ["received"] * 2
    await receiver.stop()
