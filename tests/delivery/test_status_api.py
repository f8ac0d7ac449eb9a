"""The JSON status API: 401 without a valid bearer token; a finished message from the audit log,
a waiting one from the spool, lookup by Message-ID, the queue summary; routes as documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.spool import QueueState
from tests.conftest import free_port, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.stages.dlp import builders as b

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "tok-" + "x" * 40


async def test_status_api_answers_with_a_token_and_refuses_without(world: MailWorld, tmp_path: Path) -> None:
    await world.start_dns({("clinic.test", "MX"): ["10 mx.clinic.test."],
                           ("mx.clinic.test", "A"): ["127.0.0.22"]})
    sink = await world.sink("127.0.0.22", tls_name="mx.clinic.test")
    sink.rcpt_replies["busy@clinic.test"] = "451 4.2.1 Mailbox busy"
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"# integrations\n{TOKEN}\n")
    tokens.chmod(0o600)
    port = free_port()
    gateway = await world.gateway({"api": {"listen": f"127.0.0.1:{port}", "tokens_file": str(tokens)}},
                                  retry_schedule=["1h"])
    replies = []
    for to, message_id in (("pat@clinic.test", "<one@hospital.test>"),
                           ("busy@clinic.test", "<two@hospital.test>")):
        code, text = await send(gateway.client(), SENDER, [to],
                                b.message("note", sender=SENDER, to=to, message_id=message_id))
        assert code == 250
        replies.append(text.split()[-1])
    delivered, waiting = replies
    await eventually(lambda: sink.messages and gateway.queued(QueueState.DEFERRED))
    base = f"http://127.0.0.1:{port}/api/v1"

    async with aiohttp.ClientSession() as client:
        async def get(path: str, token: str | None = TOKEN) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with client.get(base + path, headers=headers) as response:
                return response.status, await response.json()

        assert (await get(f"/messages/{delivered}", None))[0] == 401
        assert (await get(f"/messages/{delivered}", "tok-wrong"))[0] == 401
        assert (await get("/queue", TOKEN[:-1]))[0] == 401

        status, finished = await get(f"/messages/{delivered}")
        assert status == 200 and finished["state"] == "finished"
        assert finished["recipients"] == [{"address": "pat@clinic.test", "status": "delivered",
                                           "protection": "tls-verified", "dsn": "2.0.0", "attempts": 1,
                                           "updated": finished["recipients"][0]["updated"]}]
        status, queued = await get(f"/messages/{waiting}")
        assert status == 200 and queued["state"] == "deferred"
        assert queued["recipients"][0]["status"] == "deferred" and queued["recipients"][0]["dsn"] == "4.2.1"

        status, by_id = await get("/messages?message_id=%3Cone@hospital.test%3E")
        assert status == 200 and [m["queue_id"] for m in by_id["messages"]] == [delivered]
        status, summary = await get("/queue")
        assert status == 200 and summary["states"]["deferred"]["messages"] == 1
        assert (await get("/messages/NOTANID"))[0] == 400
        assert (await get("/messages/0000000000000000000"))[0] == 404


def test_openapi_documents_the_served_routes() -> None:
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    assert set(spec["paths"]) == {"/api/v1/messages/{queue_id}", "/api/v1/messages", "/api/v1/queue"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
