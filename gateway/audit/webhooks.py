"""Delivery events pushed to webhooks: the audit log is the durable outbox.

Each configured endpoint has a cursor (file, offset) into the audit log in `state_dir`. The
dispatcher reads the records after it, POSTs the ones of the endpoint's event types in order,
and moves the cursor on after each 2xx, so a restart, a crash or a receiver that is down loses
nothing: delivery is at least once, and `Webhook-Id` (from the record's seq and hash) lets the
receiver drop a repeat. A failure is retried with backoff (1 s doubling to 10 minutes) and holds
back that endpoint's later events, which keeps them in order.

Body: ``{"id", "type", "created", "data"}`` where data is the audit record without its seals.
Signature: ``X-Mailward-Signature: t=UNIX_TIME,v1=HEX(HMAC-SHA256(secret, "UNIX_TIME.BODY"))``.
A new endpoint starts at the end of the log: it gets events from when it was added.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway import eventlog
from gateway.audit.log import log_files
from gateway.config import WebhookConfig
from gateway.durable import write_atomic
from gateway.keyfiles import read_secret

log = logging.getLogger("mailward.webhooks")

POLL_INTERVAL = 1.0  # other processes' records are picked up this often
MAX_BACKOFF = 600.0
CURSOR_SAVE_INTERVAL = 0.5
TIMEOUT = 15.0
_UNSEALED = ("prev", "hash", "mac")


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(record: dict[str, Any]) -> tuple[str, bytes]:
    """The idempotency key and the JSON body for one audit record."""
    event_id = f"mw-{record['seq']}-{str(record['hash'])[:16]}"
    data = {k: v for k, v in record.items() if k not in _UNSEALED}
    body = json.dumps({"id": event_id, "type": record["event"], "created": record["ts"], "data": data},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return event_id, body


@dataclass
class Cursor:
    file: str
    offset: int


class Endpoint:
    def __init__(self, config: WebhookConfig, state_dir: Path, audit_dir: Path) -> None:
        self.config = config
        self.name = config.name or re.sub(r"[^A-Za-z0-9.-]", "_", urlsplit(config.url).netloc)
        self.secret = read_secret(config.secret_file).strip()
        self.events = frozenset(config.events)
        self.path = state_dir / f"{self.name}.cursor"
        self.audit_dir = audit_dir
        self.cursor = self._load_cursor()
        self._saved = self.cursor

    def _load_cursor(self) -> Cursor:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads(self.path.read_text())
            return Cursor(str(data["file"]), int(data["offset"]))
        files = log_files(self.audit_dir)  # new endpoint: from now on
        cursor = Cursor(files[-1].name, files[-1].stat().st_size) if files else Cursor("", 0)
        self.save(cursor)
        return cursor

    def save(self, cursor: Cursor) -> None:
        write_atomic(self.path, json.dumps({"file": cursor.file, "offset": cursor.offset}).encode())
        self._saved = cursor

    def wanted(self, record: dict[str, Any]) -> bool:
        return "*" in self.events or record.get("event") in self.events

    def pending(self, limit: int = 500) -> list[tuple[dict[str, Any], Cursor]]:
        """Records after the cursor (complete lines only), each with the cursor just past it."""
        found: list[tuple[dict[str, Any], Cursor]] = []
        for path in log_files(self.audit_dir):
            if path.name < self.cursor.file:
                continue
            offset = self.cursor.offset if path.name == self.cursor.file else 0
            with open(path, "rb") as handle:
                handle.seek(offset)
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # being written; next time
                    offset += len(raw)
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue  # `audit verify` reports it; events go on
                    found.append((record, Cursor(path.name, offset)))
                    if len(found) >= limit:
                        return found
        return found


class WebhookDispatcher:
    def __init__(self, endpoints: list[WebhookConfig], audit_dir: Path, state_dir: Path,
                 *, ssl_context: ssl.SSLContext | None = None) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.endpoints = [Endpoint(config, state_dir, audit_dir) for config in endpoints]
        self.ssl_context = ssl_context
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(endpoint)) for endpoint in self.endpoints]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for endpoint in self.endpoints:
            if endpoint.cursor != endpoint._saved:
                endpoint.save(endpoint.cursor)

    async def _run(self, endpoint: Endpoint) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context is not None else True)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            while True:
                batch = await asyncio.to_thread(endpoint.pending)
                last_save = time.monotonic()
                for record, after in batch:
                    if endpoint.wanted(record):
                        await self._post_until_accepted(session, endpoint, record)
                    endpoint.cursor = after
                    if time.monotonic() - last_save > CURSOR_SAVE_INTERVAL:
                        await asyncio.to_thread(endpoint.save, after)
                        last_save = time.monotonic()
                if batch:
                    await asyncio.to_thread(endpoint.save, endpoint.cursor)
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)

    async def _post_until_accepted(self, session: aiohttp.ClientSession, endpoint: Endpoint,
                                   record: dict[str, Any]) -> None:
        event_id, body = payload(record)
        delay = 1.0
        attempt = 0
        while True:
            attempt += 1
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", "Webhook-Id": event_id,
                       "X-Mailward-Event": str(record["event"]), "X-Mailward-Timestamp": str(timestamp),
                       "X-Mailward-Signature": signature(endpoint.secret, timestamp, body)}
            try:
                async with session.post(endpoint.config.url, data=body, headers=headers,
                                        allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = type(exc).__name__
            eventlog.event(log, "webhook_failed", logging.WARNING, endpoint=endpoint.name, id=event_id,
                           attempt=attempt, error=problem, retry_in=f"{delay:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
