"""The JSON status API (`docs/openapi.yaml`) on `api.listen`, for integrators' systems.

Every request needs ``Authorization: Bearer TOKEN`` with a token from `api.tokens_file` (see
`apitokens`: compared as hashes, in constant time); anything else is 401, and a token without the
``status`` scope gets 403. A message still in the spool is described from the spool
(its live state); a finished one from its audit records of the last `api.search_days` days. The
answers hold ids, addresses, states, codes and protection methods, never content.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import apitokens, eventlog
from gateway.audit import reader
from gateway.config import ApiConfig
from gateway.errors import ConfigError, SpoolError, StateUnavailable
from gateway.httpheaders import Handler, server_header
from gateway.message import QueuedMessage
from gateway.spool import QueueState, Spool
from gateway.spool.store import is_queue_id
from gateway.status import queue_summary

if TYPE_CHECKING:
    from gateway.ingress.sendapi import SendApi

_RESULT_EVENTS = ("delivered", "deferred", "bounced", "expired")
log = logging.getLogger("mailward.api")
SHARED_TOKENS_TTL = 2.0  # seconds a cluster's token list is used before it is read again
TOKEN = web.RequestKey("token", apitokens.ApiToken)  # the token a request came with


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
    def __init__(self, config: ApiConfig, spool: Spool, audit_dir: Path | None,
                 sender: SendApi | None = None,
                 shared_tokens: Callable[[], list[apitokens.ApiToken]] | None = None) -> None:
        self.config = config
        self.sender = sender
        self.spool = spool
        self.audit_dir = audit_dir
        self.shared_tokens = shared_tokens  # reads a cluster's, from its database; else the tokens file
        self._tokens: list[apitokens.ApiToken] = []
        self._tokens_seen: float | None = None
        self._refresh: asyncio.Future[list[apitokens.ApiToken]] | None = None
        if shared_tokens is not None:
            self._fetched(shared_tokens)
        else:
            self.tokens()  # a malformed file is refused at start (ConfigError)

    def application(self) -> web.Application:
        size = int(self.config.max_request_size) if self.sender is not None else 4096
        app = web.Application(middlewares=[server_header, self._authorize], client_max_size=size)
        app.router.add_get("/api/v1/messages/{queue_id}", self.message)
        if self.sender is not None:
            app.router.add_post("/api/v1/messages", self.send)
        app.router.add_get("/api/v1/messages", self.messages)
        app.router.add_get("/api/v1/queue", self.queue)
        return app

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        presented = given[7:].strip()[:200] if given[:7].lower() == "bearer " else ""
        token = apitokens.find(self.tokens(), presented) if presented else None
        if token is None:
            return _json({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Bearer realm="mailward"'})
        scope = "send" if request.method == "POST" else "status"
        if scope not in token.scopes:
            return _json({"error": f"this token has no {scope} scope"}, 403)
        request[TOKEN] = token
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    def _fetched(self, load: Callable[[], list[apitokens.ApiToken]]) -> None:
        try:
            self._tokens = load()
        except (StateUnavailable, ValueError) as exc:
            eventlog.event(log, "api_tokens_unreadable", logging.ERROR, error=str(exc),
                           note="the tokens read before stay in force")
        self._tokens_seen = time.monotonic()

    def tokens(self) -> list[apitokens.ApiToken]:
        """The tokens as they are now. A cluster's are read again in the background at most every
        SHARED_TOKENS_TTL (a request never waits on the database); the tokens file is read again
        when it changed (``mailward api token add`` takes effect at once); no file is no token."""
        if self.shared_tokens is not None:
            stale = time.monotonic() - (self._tokens_seen or 0.0) > SHARED_TOKENS_TTL
            if stale and self._refresh is None:
                self._refresh = asyncio.ensure_future(asyncio.to_thread(self.shared_tokens))
                self._refresh.add_done_callback(self._refreshed)
            return self._tokens
        path = self.config.tokens_file
        try:
            changed = path.stat().st_mtime_ns
        except FileNotFoundError:
            if self._tokens_seen is None:
                eventlog.event(log, "api_no_tokens", logging.WARNING, file=path,
                               note="every request gets 401: mailward api token add NAME --scope send,status")
            self._tokens, self._tokens_seen = [], -1.0
            return self._tokens
        if changed != self._tokens_seen:
            try:
                self._tokens = apitokens.load(path)
            except ValueError as exc:
                if self._tokens_seen is None:
                    raise ConfigError(str(exc)) from None
                eventlog.event(log, "api_tokens_unreadable", logging.ERROR, error=str(exc),
                               note="the tokens read before stay in force")
            self._tokens_seen = changed
        return self._tokens

    def _refreshed(self, done: asyncio.Future[list[apitokens.ApiToken]]) -> None:
        self._refresh = None
        self._fetched(done.result)

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

    async def send(self, request: web.Request) -> web.Response:
        assert self.sender is not None
        return await self.sender.send(request, request[TOKEN])

    async def queue(self, request: web.Request) -> web.Response:
        summary = await self.spool.offload(queue_summary, self.spool.directory, time.time())
        return _json({"states": summary}, 200)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json",
                        headers=headers)
