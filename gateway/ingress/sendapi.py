"""The ``POST /api/v1/messages`` handler: a request in (see `httpapi` for its format), every
recipient's message through `IngressHandler.submit` (DLP, spool, audit), an answer per recipient
out. Recipients are submitted concurrently in batches, so that their spool writes share fsyncs.

Statuses: 200 when at least one recipient was queued (the others carry their error); 422 when
policy refused every recipient (the rule's text); 400/413 for a request that is not acceptable;
403 for a sender domain or pool the token may not use; 409 for an idempotency key reused with
another body; 429 with Retry-After past the token's requests per minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import eventlog
from gateway.apitokens import ApiToken
from gateway.ingress.handler import IngressHandler
from gateway.ingress.httpapi import (
    IdempotencyStore,
    Outcome,
    RateLimiter,
    RequestError,
    SendLimits,
    api_client,
    build_message,
    envelope_for,
    envelope_sender,
    parse_request,
    raw_message,
    valid_address,
)

log = logging.getLogger("mailward.api")
BATCH = 64  # recipients submitted at once: their spool writes and audit records share fsyncs
# (recipients, sender domain) -> those on the suppression list: one look at the list per request.
Suppressed = Callable[[list[str], str], set[str]]


class SendApi:
    def __init__(self, handler: IngressHandler, limits: SendLimits, state_dir: Path,
                 suppressed: Suppressed | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.idempotency = IdempotencyStore(state_dir / "idempotency")
        self.rates = RateLimiter(limits.requests_per_minute)
        self.suppressed = suppressed

    async def send(self, request: web.Request, token: ApiToken) -> web.Response:
        wait = self.rates.wait(token.name, time.monotonic())
        if wait:
            limit = self.limits.requests_per_minute
            return _answer({"error": f"more than {limit} requests a minute"}, 429,
                           {"Retry-After": str(max(1, int(wait + 0.999)))})
        raw_body = await request.read()
        try:
            status, answer = await self._handle(raw_body, token, request.remote or "unknown")
        except RequestError as problem:
            return _answer({"error": str(problem)}, problem.status)
        return _answer(answer, status)

    async def _handle(self, raw_body: bytes, token: ApiToken, peer: str) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw_body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not JSON: {exc}") from None
        fields = parse_request(body, self.limits.max_recipients)
        key = fields.get("idempotency_key")
        digest = hashlib.sha256(raw_body).hexdigest()
        if key:
            earlier = await asyncio.to_thread(self.idempotency.get, token.name, key)
            if earlier is not None:
                if earlier["digest"] != digest:
                    raise RequestError(409, "idempotency_key was used with another request body")
                return int(earlier["status"]), dict(earlier["answer"])
        status, answer = await self._submit_all(fields, token, peer)
        if key:
            await asyncio.to_thread(self.idempotency.put, token.name, key, digest, status, answer)
        return status, answer

    async def _submit_all(self, fields: dict[str, Any], token: ApiToken,
                          peer: str) -> tuple[int, dict[str, Any]]:
        settings = self.handler.settings
        pool = fields.get("pool")
        if pool is not None and (not token.allows_pool(pool) or pool not in settings.pools):
            raise RequestError(403, f"pool {pool!r}: not a pool this token may use")
        raw = raw_message(fields, self.limits.max_content) if fields.get("content") is not None else None
        sender = envelope_sender(fields, raw)
        if not valid_address(sender):
            raise RequestError(400, "from: not a valid address")
        if not token.allows_sender(sender) or not settings.relay.sender_allowed(sender):
            raise RequestError(403, f"{sender}: this token may not send from this domain")
        protection = fields.get("protection") or "policy"
        if protection not in ("policy", "required"):
            raise RequestError(400, "protection: policy (the default) or required (never weaker than "
                                    "policy)")
        client = api_client(peer, token)
        recipients = fields["recipients"]
        suppressed: set[str] = set()
        if self.suppressed is not None:
            suppressed = await asyncio.to_thread(self.suppressed, [r["address"].strip() for r in recipients],
                                                 sender.rpartition("@")[2].lower())
        outcomes: list[Outcome] = []
        for start in range(0, len(recipients), BATCH):
            outcomes += await asyncio.gather(*(
                self._one(fields, raw, sender, entry, client, pool, protection == "required", suppressed)
                for entry in recipients[start:start + BATCH]))
        queued = [o for o in outcomes if o.queue_id is not None]
        eventlog.event(log, "api_request", token=token.name, recipients=len(outcomes), queued=len(queued),
                       refused=len(outcomes) - len(queued))
        status = 200 if queued else 422 if all(o.code >= 500 for o in outcomes) and any(
            o.code == 550 for o in outcomes) else 400
        return status, {"results": [o.json() for o in outcomes]}

    async def _one(self, fields: dict[str, Any], raw: bytes | None, sender: str, entry: dict[str, Any],
                   client: Any, pool: str | None, require: bool, suppressed: set[str]) -> Outcome:
        address = entry["address"].strip()
        if not valid_address(address):
            return Outcome(address, error="invalid address", code=553)
        if address in suppressed:
            return Outcome(address, error="suppressed: the recipient is on the suppression list", code=550)
        if raw is None:
            try:
                content = build_message(fields, address, entry.get("substitutions", {}),
                                        self.handler.settings.hostname)
            except KeyError as missing:
                return Outcome(address, error=f"no substitution for {{{{{missing.args[0]}}}}}", code=400)
            except RequestError as problem:
                return Outcome(address, error=str(problem), code=400)
        else:
            content = raw
        submitted = await self.handler.submit(envelope_for(sender, address), content, client,
                                              asked_pool=pool, require_protection=require)
        if submitted.queue_id is None:
            return Outcome(address, error=submitted.reply[4:] if submitted.reply[:3].isdigit()
                           else submitted.reply, code=submitted.code)
        return Outcome(address, queue_id=submitted.queue_id)


def _answer(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json",
                        headers=headers)

