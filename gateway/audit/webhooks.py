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

In a cluster the events come from the cluster's copy of every node's audit log (see `shipper`),
each endpoint's cursors (one per node) are kept in the database, and only the node holding the
dispatcher lease sends: each event goes out once for the cluster, and when that node dies another
takes the lease over (after LEASE_TTL) and goes on from the saved cursors.
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
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from gateway import eventlog
from gateway.audit.log import log_files
from gateway.config import WebhookConfig
from gateway.durable import write_atomic
from gateway.errors import StateUnavailable
from gateway.keyfiles import read_secret

log = logging.getLogger("mailward.webhooks")

POLL_INTERVAL = 1.0  # other processes' records are picked up this often
MAX_BACKOFF = 600.0
CURSOR_SAVE_INTERVAL = 0.5
TIMEOUT = 15.0
LEASE_TTL = 15.0  # a dispatcher that stops renewing loses the lease after this
LEASE_RENEW = 5.0
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
        self.name = _name(config)
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


class ClusterCopy(Protocol):
    """What a cluster endpoint needs of the audit copy (`state.audit_copy.PgAuditCopy`)."""

    def cursors(self, endpoint: str) -> dict[str, int]: ...

    def start_cursors(self, endpoint: str) -> dict[str, int]: ...

    def save_cursor(self, endpoint: str, node_id: str, seq: int) -> None: ...

    def pending(self, cursors: dict[str, int], limit: int) -> list[tuple[str, int, str]]: ...


class Lease(Protocol):
    def hold(self, ttl: float) -> bool: ...

    def give_up(self) -> None: ...


class ClusterEndpoint:
    """An endpoint fed from the cluster's audit copy; its cursor is (node, seq) per node."""

    def __init__(self, config: WebhookConfig, copy: ClusterCopy) -> None:
        self.config = config
        self.name = _name(config)
        self.secret = read_secret(config.secret_file).strip()
        self.events = frozenset(config.events)
        self.copy = copy
        self.cursors: dict[str, int] | None = None  # read when this node first holds the lease
        self.cursor: tuple[str, int] = ("", 0)
        self._saved = self.cursor

    def wanted(self, record: dict[str, Any]) -> bool:
        return "*" in self.events or record.get("event") in self.events

    def pending(self, limit: int = 500) -> list[tuple[dict[str, Any], tuple[str, int]]]:
        # Read again on each batch: another node may have held the lease meanwhile.
        self.cursors = self.copy.cursors(self.name) or self.copy.start_cursors(self.name)
        found = []
        for node_id, seq, line in self.copy.pending(self.cursors, limit):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            found.append(({**record, "node": node_id}, (node_id, seq)))
        return found

    def save(self, cursor: tuple[str, int]) -> None:
        self.copy.save_cursor(self.name, *cursor)
        self._saved = cursor


def _name(config: WebhookConfig) -> str:
    return config.name or re.sub(r"[^A-Za-z0-9.-]", "_", urlsplit(config.url).netloc)


class WebhookDispatcher:
    def __init__(self, endpoints: list[WebhookConfig], audit_dir: Path, state_dir: Path,
                 *, ssl_context: ssl.SSLContext | None = None, copy: ClusterCopy | None = None,
                 lease: Lease | None = None) -> None:
        """On one node the endpoints follow `audit_dir`; with `copy` and `lease` (a cluster),
        they follow the cluster's copy while this node holds the lease."""
        self.endpoints: list[Endpoint | ClusterEndpoint]
        if copy is not None:
            self.endpoints = [ClusterEndpoint(config, copy) for config in endpoints]
        else:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.endpoints = [Endpoint(config, state_dir, audit_dir) for config in endpoints]
        self.lease = lease
        self.holding = lease is None
        self.ssl_context = ssl_context
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(endpoint)) for endpoint in self.endpoints]
        if self.lease is not None:
            self._tasks.append(asyncio.create_task(self._keep_lease(self.lease)))

    async def _keep_lease(self, lease: Lease) -> None:
        """Take the dispatcher lease when it is free, and renew it while held."""
        while True:
            try:
                held = await asyncio.to_thread(lease.hold, LEASE_TTL)
            except StateUnavailable:
                held = False  # without the database, nobody can dispatch (nor save a cursor)
            if held != self.holding:
                self.holding = held
                eventlog.event(log, "webhook_dispatcher", role="holder" if held else "standby")
                if held:
                    self.wake()
            await asyncio.sleep(LEASE_RENEW)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for endpoint in self.endpoints:
            if endpoint.cursor != endpoint._saved:
                with contextlib.suppress(StateUnavailable):
                    endpoint.save(endpoint.cursor)  # type: ignore[arg-type]
        if self.lease is not None and self.holding:
            with contextlib.suppress(StateUnavailable):
                await asyncio.to_thread(self.lease.give_up)  # another node takes over at once

    async def _run(self, endpoint: Endpoint | ClusterEndpoint) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context is not None else True)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            while True:
                if not self.holding:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
                    continue
                try:
                    batch: list[Any] = await asyncio.to_thread(endpoint.pending)
                except StateUnavailable:
                    await asyncio.sleep(POLL_INTERVAL)
                    continue
                last_save = time.monotonic()
                for record, after in batch:
                    if endpoint.wanted(record):
                        await self._post_until_accepted(session, endpoint, record)
                    endpoint.cursor = after
                    if time.monotonic() - last_save > CURSOR_SAVE_INTERVAL or self.lease is not None:
                        # In a cluster after every event: a new lease holder repeats none.
                        await asyncio.to_thread(endpoint.save, after)
                        last_save = time.monotonic()
                if batch:
                    await asyncio.to_thread(endpoint.save, endpoint.cursor)  # type: ignore[arg-type]
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)

    async def _post_until_accepted(self, session: aiohttp.ClientSession, endpoint: Endpoint | ClusterEndpoint,
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
