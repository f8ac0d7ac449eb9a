"""A 10,000-recipient request to the sending API is answered once every recipient's message is
durable: a kill -9 right after the answer loses nothing and, after the restart, every recipient
gets its message exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml

from gateway import apitokens
from tests.conftest import GatewayProcess
from tests.polling import eventually, free_port
from tests.smtpsink import start_sink

COUNT = 10_000


async def test_ten_thousand_recipients_survive_a_kill_and_are_delivered_once(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    sink_port = free_port("127.0.0.21")
    sink, server = await start_sink("127.0.0.21", sink_port)
    tokens = tmp_path / "api-tokens"
    token = apitokens.add(tokens, "bulk", ["send"], [], [])
    api_port = free_port()
    gw = gateway_process(
        api={"listen": f"127.0.0.1:{api_port}", "tokens_file": str(tokens),
             "state_dir": str(tmp_path / "api")},
        delivery={"paused": True, "nameservers": ["127.0.0.1:9"],
                  "routes": {"clinic.test": f"127.0.0.21:{sink_port}"}})
    try:
        gw.start()
        body = {"from": "reminders@hospital.test", "subject": "Reminder {{n}}", "text": "Visit {{n}}",
                "recipients": [{"address": f"p{n}@clinic.test", "substitutions": {"n": n}}
                               for n in range(COUNT)]}
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as client, client.post(
                f"http://127.0.0.1:{api_port}/api/v1/messages", json=body,
                headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status == 200
            results = (await answer.json())["results"]
        gw.signal(signal.SIGKILL)  # right after the answer
        await asyncio.to_thread(gw.wait)
        assert len(results) == COUNT and all("queue_id" in r for r in results)

        settings = yaml.safe_load(gw.config_file.read_text())
        settings["delivery"]["paused"] = False
        gw.config_file.write_text(yaml.safe_dump(settings))
        gw.start()
        await eventually(lambda: len(sink.messages) >= COUNT, timeout=600, interval=0.5)
        recipients = [m.recipients[0] for m in sink.messages]
        assert len(recipients) == COUNT and len(set(recipients)) == COUNT  # each exactly once
    finally:
        gw.stop()
        server.close()
