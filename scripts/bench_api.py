"""`scripts/bench api`: messages accepted per second by the HTTP sending API, beside SMTP ingest
into the same gateway configuration in the same run.

1. one request with 10,000 recipients (each its own message);
2. 1,000 requests with one recipient each, from 20 concurrent clients;
3. SMTP: the same 1,000 messages with smtp-source over 20 sessions.

Every message is durable (spool fsync, audit) before its answer, as over SMTP; the shipped DLP
policies run on each. Delivery is paused. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway import apitokens

BULK = 10_000
SINGLES = 1_000
CLIENTS = 20


async def one_bulk_request(port: int, token: str) -> float:
    body = {"from": "reminders@bench.test", "subject": "Reminder {{n}}", "text": "Your visit {{n}} is soon.",
            "recipients": [{"address": f"p{n}@example.org", "substitutions": {"n": n}} for n in range(BULK)]}
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client, client.post(
            f"http://127.0.0.1:{port}/api/v1/messages", json=body,
            headers={"Authorization": f"Bearer {token}"}) as answer:
        results = (await answer.json())["results"]
    seconds = time.monotonic() - started
    assert sum("queue_id" in r for r in results) == BULK, "not every recipient was queued"
    return seconds


async def single_requests(port: int, token: str) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(SINGLES):
        queue.put_nowait(n)

    async def client_loop(client: aiohttp.ClientSession) -> None:
        while not queue.empty():
            n = queue.get_nowait()
            body = {"from": "reminders@bench.test", "subject": "Reminder", "text": f"Visit {n} " * 100,
                    "recipients": [{"address": f"p{n}@example.org"}]}
            async with client.post(f"http://127.0.0.1:{port}/api/v1/messages", json=body,
                                   headers={"Authorization": f"Bearer {token}"}) as answer:
                assert answer.status == 200, await answer.text()

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return time.monotonic() - started


def run(mailward_gateway: Callable[..., Any], wait_count: Callable[[Path, int], int],
        run_smtp_source: Callable[[int, int, int, int], float], free_port: Callable[[], int],
        workdir: Path) -> None:
    tokens = workdir / "api-tokens"
    token = apitokens.add(tokens, "bench", ["send"], [], [])
    api_port = free_port()
    extra = (f"api: {{listen: '127.0.0.1:{api_port}', tokens_file: '{tokens}', "
             f"requests_per_minute: 1000000, state_dir: '{workdir / 'api'}'}}\n")
    rows = []
    with mailward_gateway(workdir / "bulk", extra=extra + _policies()) as (_port, incoming, _proc):
        seconds = asyncio.run(one_bulk_request(api_port, token))
        wait_count(incoming, BULK)
        rows.append(("API, 1 request x 10,000 recipients", BULK, seconds))
    with mailward_gateway(workdir / "singles", extra=extra + _policies()) as (_port, incoming, _proc):
        seconds = asyncio.run(single_requests(api_port, token))
        wait_count(incoming, SINGLES)
        rows.append((f"API, {SINGLES} requests x 1 recipient, {CLIENTS} clients", SINGLES, seconds))
    with mailward_gateway(workdir / "smtp", extra=extra + _policies()) as (port, incoming, _proc):
        seconds = run_smtp_source(port, SINGLES, CLIENTS, 1024)
        wait_count(incoming, SINGLES)
        rows.append((f"SMTP, {SINGLES} messages, {CLIENTS} sessions (smtp-source)", SINGLES, seconds))
    print(f"\n{'':<52}{'messages':>10}{'seconds':>10}{'msg/s':>10}")
    for name, count, seconds in rows:
        print(f"{name:<52}{count:>10}{seconds:>10.2f}{count / seconds:>10.0f}")
    smtp_rate = rows[2][1] / rows[2][2]
    print(f"ratio API/SMTP: bulk {rows[0][1] / rows[0][2] / smtp_rate:.2f}x, "
          f"single requests {rows[1][1] / rows[1][2] / smtp_rate:.2f}x")


def _policies() -> str:
    from gateway.policies import builtin_directory

    return f"policies_dir: {builtin_directory()}\n"
