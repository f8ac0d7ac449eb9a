"""The JSON status API (`docs/openapi.yaml`) on `api.listen`, for integrators' systems.

Every request needs ``Authorization: Bearer TOKEN`` with a token from `api.tokens_file` (compared
in constant time); anything else is 401. A message still in the spool is described from the spool
(its live state); a finished one from its audit records of the last `api.search_days` days. The
answers hold ids, addresses, states, codes and protection methods, never content.
"""

from __future__ import annotations

import datetime
import hmac
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit import reader
from gateway.config import ApiConfig
from gateway.errors import SpoolError
from gateway.httpheaders import Handler, server_header
from gateway.keyfiles import read_secret
from gateway.message import QueuedMessage
from gateway.spool import QueueState, Spool
from gateway.spool.store import is_queue_id
from gateway.status import queue_summary

_RESULT_EVENTS = ("delivered", "deferred", "bounced", "expired")


def load_tokens(path: Path) -> list[bytes]:
    """One token per line; blank lines and # comments are skipped."""
    lines = read_secret(path).decode("utf-8").splitlines()
    return [line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def from_spool(message: QueuedMessage, state: QueueState) -> dict[str, Any]:
    return {"queue_id": message.queue_id, "message_id": message.message_id, "state": state.value,
            "received_at": _iso(message.received_at), "sender": message.envelope.sender,
            "recipients": [{"address": recipient.address, "status": status.state.value,
                            "protection": status.protection or None, "dsn": status.dsn or None,
                            "attempts": status.attempts,
                            "updated": _iso(status.at) if status.at else None}
                           for recipient, status in zip(message.envelope.recipients, message.statuses,
                                                        strict=False)]}


def from_audit(queue_id: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A finished (or deleted) message, as its audit records tell it."""
    received = next((r for r in records if r.get("event") == "received"), None)
    if received is None:
        return None
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("event") in _RESULT_EVENTS:
            latest[str(record["recipient"])] = record
    deleted = any(r.get("event") == "deleted" for r in records)
    recipients = []
    for address in received.get("recipients", []):
        result = latest.get(address)
        recipients.append({"address": address,
                           "status": result["event"] if result else ("dropped" if deleted else "pending"),
                           "protection": result.get("protection") if result else None,
                           "dsn": result.get("status") if result else None,
                           "attempts": result.get("attempt", 0) if result else 0,
                           "updated": result.get("ts") if result else None})
    return {"queue_id": queue_id, "message_id": received.get("message_id"),
            "state": "deleted" if deleted else "finished", "received_at": received.get("ts"),
            "sender": received.get("sender"), "recipients": recipients}


class StatusApi:
    def __init__(self, config: ApiConfig, spool: Spool, audit_dir: Path | None) -> None:
        self.config = config
        self.spool = spool
        self.audit_dir = audit_dir
        self.tokens = load_tokens(config.tokens_file)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[server_header, self._authorize], client_max_size=4096)
        app.router.add_get("/api/v1/messages/{queue_id}", self.message)
        app.router.add_get("/api/v1/messages", self.messages)
        app.router.add_get("/api/v1/queue", self.queue)
        return app

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        token = given[7:].strip().encode() if given[:7].lower() == "bearer " else b""
        # Every token is compared, so the time taken says nothing about which one was close.
        matched = False
        for known in self.tokens:
            matched |= hmac.compare_digest(token, known)
        if not token or not matched:
            return _json({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Bearer realm="mailward"'})
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    def _since(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=self.config.search_days)

    async def _describe(self, queue_id: str) -> dict[str, Any] | None:
        try:
            state = await self.spool.offload(self.spool.locate, queue_id)
            if state is not None:
                message = await self.spool.offload(self.spool.load, queue_id, state)
                return from_spool(message, state)
        except (SpoolError, FileNotFoundError):
            pass  # finished while we looked: the audit log has it
        if self.audit_dir is None:
            return None
        records = await self.spool.offload(reader.search, self.audit_dir, reader.Query(
            queue_id=queue_id, since=self._since()))
        return from_audit(queue_id, records)

    async def message(self, request: web.Request) -> web.Response:
        queue_id = request.match_info["queue_id"]
        if not is_queue_id(queue_id):
            return _json({"error": "not a queue id"}, 400)
        found = await self._describe(queue_id)
        return _json(found, 200) if found is not None else _json({"error": "not found"}, 404)

    async def messages(self, request: web.Request) -> web.Response:
        message_id = request.query.get("message_id", "")
        if not message_id or len(message_id) > 255:
            return _json({"error": "give message_id"}, 400)
        if self.audit_dir is None:
            return _json({"messages": []}, 200)
        records = await self.spool.offload(reader.search, self.audit_dir, reader.Query(
            message_id=message_id, since=self._since()))
        queue_ids = list(dict.fromkeys(str(r["queue_id"]) for r in records if r.get("event") == "received"))
        found = [await self._describe(queue_id) for queue_id in queue_ids]
        return _json({"messages": [f for f in found if f is not None]}, 200)

    async def queue(self, request: web.Request) -> web.Response:
        summary = await self.spool.offload(queue_summary, self.spool.directory, time.time())
        return _json({"states": summary}, 200)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json",
                        headers=headers)
