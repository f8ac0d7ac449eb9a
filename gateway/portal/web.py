"""The portal's web app (aiohttp, server-rendered, no JavaScript needed).

Flow: the link ``/m/TOKEN`` shows who the passcode goes to (masked); "Send me a passcode" mails a
one-time code to the recipient; the right code opens a session (an HttpOnly, SameSite=Strict
cookie, Secure over https) bound to that message only; then the message, its attachments (always
downloaded, never rendered) and a reply form. The link alone never shows content.

Every response carries a strict CSP, no-store caching, no referrer, nosniff and frame denial;
HSTS when the portal's base URL is https. Forms carry a CSRF token (double-submit cookie). An
HTML body is shown in a sandboxed frame (no scripts, no same-origin) served with its own CSP that
blocks remote images and everything else remote. Requests for passcodes are limited per message
(see `passcode`) and per client address.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from importlib import resources
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

import jinja2
from aiohttp import web

from gateway import eventlog, metrics
from gateway.audit.events import Audit
from gateway.config import PortalConfig
from gateway.portal import passcode
from gateway.portal.passwords import RecipientPasswords
from gateway.portal.store import PortalError, PortalMessage, PortalStore, Tombstone, message_id_of

log = logging.getLogger("mailward.portal")

SendCode = Callable[[PortalMessage, str], Awaitable[None]]


class Unsubscribe(Protocol):
    """What the one-click endpoint needs: read a link's token, record the unsubscribe."""

    def read(self, token: str) -> tuple[str, str] | None: ...
    async def done(self, address: str, sender_domain: str) -> None: ...

SendReply = Callable[[PortalMessage, EmailMessage, str], Awaitable[None]]

SESSION_TTL = 1800.0
MAX_REPLY = 20_000
PER_IP_CODES = 10  # passcode requests per client address per hour
_PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' https:; frame-src 'self'; "
             "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_BODY_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
_SCRIPT = re.compile(r"<script\b.*?</script\s*>", re.IGNORECASE | re.DOTALL)


@dataclass
class _Session:
    message_id: str
    expires: float
    csrf: str


class PortalApp:
    def __init__(self, store: PortalStore, config: PortalConfig, *, send_code: SendCode,
                 send_reply: SendReply, audit: Audit | None = None,
                 unsubscribe: Unsubscribe | None = None) -> None:
        self.store = store
        self.audit = audit or Audit.off()
        self.unsubscribe_hook = unsubscribe
        self.config = config
        self.send_code = send_code
        self.send_reply = send_reply
        self.secure = config.base_url.startswith("https://")
        self.passwords = RecipientPasswords(store.directory / "passwords.json")
        self._sessions: dict[str, _Session] = {}
        self._code_requests: dict[str, list[float]] = {}
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.portal", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined)
        self._css = resources.files("gateway.portal").joinpath("templates/portal.css").read_bytes()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=64 * 1024)
        app.router.add_get("/m/{token}", self.start)
        app.router.add_post("/m/{token}/code", self.request_code)
        app.router.add_post("/m/{token}/verify", self.verify)
        app.router.add_post("/m/{token}/password", self.password_login)
        app.router.add_post("/m/{token}/set-password", self.set_password)
        app.router.add_get("/m/{token}/read", self.read)
        app.router.add_get("/m/{token}/body", self.body)
        app.router.add_get("/m/{token}/attachment/{index}", self.attachment)
        app.router.add_post("/m/{token}/reply", self.reply)
        if self.unsubscribe_hook is not None:
            app.router.add_get("/u/{token}", self.unsubscribe_page)
            app.router.add_post("/u/{token}", self.unsubscribe)
        app.router.add_get("/static/portal.css", self.css)
        app.router.add_get("/healthz", self.health)
        return app

    @web.middleware
    async def _headers(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and errors get the same headers
            self._secure(exc.headers)
            raise
        self._secure(response.headers)
        return response

    def _secure(self, headers: Any) -> None:
        headers.setdefault("Content-Security-Policy", _PAGE_CSP)
        headers["Cache-Control"] = "no-store"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Content-Type-Options"] = "nosniff"
        headers.setdefault("X-Frame-Options", "DENY")
        if self.secure:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    # -- pages ------------------------------------------------------------------------------

    def _page(self, template: str, status: int = 200, **values: Any) -> web.Response:
        html = self._templates.get_template(template).render(branding=self.config.branding, **values)
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)

    def _notice(self, title: str, text: str, status: int) -> web.HTTPException:
        """A page that ends the request: raise it."""
        html = self._templates.get_template("notice.html.j2").render(
            branding=self.config.branding, title=title, text=text)
        return _ERRORS[status](text=html, content_type="text/html")

    def _message(self, request: web.Request) -> tuple[str, PortalMessage, bytes]:
        """The link's token and its message; a clear page (raised) when there is none."""
        token = request.match_info["token"]
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", token):
            raise self._notice("Message not found", "This link is not valid.", 404)
        try:
            found = self.store.load(message_id_of(token))
        except PortalError:
            raise self._notice("Message unavailable", "This message cannot be shown.", 500) from None
        if isinstance(found, Tombstone):
            words = "has expired" if found.reason == "expired" else "was withdrawn by the sender"
            raise self._notice("Message no longer available", f"This secure message {words}.", 410)
        if found is None:
            raise self._notice("Message not found", "This link is not valid.", 404)
        return token, found[0], found[1]

    def _csrf(self, request: web.Request) -> str:
        return request.cookies.get("mw_csrf") or secrets.token_urlsafe(24)

    def _with_csrf(self, response: web.Response, value: str) -> web.Response:
        response.set_cookie("mw_csrf", value, httponly=True, samesite="Strict", secure=self.secure,
                            path="/m/")
        return response

    async def _form(self, request: web.Request) -> dict[str, str] | None:
        form = await request.post()
        sent, cookie = str(form.get("csrf", "")), request.cookies.get("mw_csrf", "")
        if not cookie or not hmac.compare_digest(sent, cookie):
            return None
        return {key: str(value) for key, value in form.items()}

    async def start(self, request: web.Request, *, message: str = "",
                    code_sent: bool = False) -> web.Response:
        token, record, _ = self._message(request)
        csrf = self._csrf(request)
        return self._with_csrf(self._page(
            "start.html.j2", title="You have a secure message", token=token, csrf=csrf,
            masked=_mask(record.recipient), message=message, code_sent=code_sent,
            has_password=self.passwords.has(record.recipient) and not passcode.locked(record),
            expires=_when(record.expires)), csrf)

    async def request_code(self, request: web.Request) -> web.Response:
        _, record, content = self._message(request)
        if await self._form(request) is None:
            raise self._notice("Please try again", "The form expired; open the link again.", 403)
        client = request.remote or "unknown"
        now = time.time()
        recent = [t for t in self._code_requests.get(client, []) if now - t < 3600]
        if len(recent) >= PER_IP_CODES or not passcode.may_send(record, now):
            eventlog.event(log, "portal_code_refused", logging.WARNING, message_id=record.message_id,
                           client=client, reason="locked" if passcode.locked(record, now) else "rate")
            return await self.start(request, message="Too many passcodes were requested. Please wait "
                                                     "a few minutes and try again.", code_sent=True)
        self._code_requests[client] = [*recent, now]
        code, record = passcode.issue(record, now)
        self.store.update(record, content)
        await self.send_code(record, code)
        await self._event("code_sent", record, client)
        return await self.start(request, message=f"We sent a passcode to {_mask(record.recipient)}.",
                                code_sent=True)

    async def verify(self, request: web.Request) -> web.Response:
        token, record, content = self._message(request)
        form = await self._form(request)
        if form is None:
            raise self._notice("Please try again", "The form expired; open the link again.", 403)
        check = passcode.verify(record, form.get("code", "")[:12])
        self.store.update(check.record, content)
        if not check.ok:
            await self._event("locked" if check.reason == "locked" else "code_failed", record,
                              request.remote, logging.WARNING, reason=check.reason)
            words = {"locked": "Too many wrong passcodes. The message is locked for 15 minutes.",
                     "expired": "That passcode has expired. Request a new one.",
                     "none": "Request a passcode first."}.get(check.reason, "That passcode is not right.")
            return await self.start(request, message=words, code_sent=check.reason != "locked")
        await self._open_session(token, record, request)

    async def password_login(self, request: web.Request) -> web.Response:
        token, record, content = self._message(request)
        form = await self._form(request)
        if form is None:
            raise self._notice("Please try again", "The form expired; open the link again.", 403)
        if passcode.locked(record):
            return await self.start(request, message="Too many wrong attempts. The message is locked "
                                                     "for 15 minutes.")
        password = form.get("password", "")[:200]
        if await asyncio.to_thread(self.passwords.check, record.recipient, password):
            await self._open_session(token, record, request)
        # A wrong password counts like a wrong passcode towards the lockout.
        failures = record.failed_codes + 1
        locked = failures >= passcode.MAX_FAILURES
        self.store.update(record, content, failed_codes=0 if locked else failures,
                          locked_until=time.time() + passcode.LOCKOUT if locked else record.locked_until)
        await self._event("locked" if locked else "code_failed", record, request.remote, logging.WARNING,
                          reason="password")
        text = "Too many wrong attempts. The message is locked for 15 minutes." if locked else \
            "That password is not right."
        return await self.start(request, message=text)

    async def _event(self, name: str, record: PortalMessage, client: str | None,
                     level: int = logging.INFO, **fields: object) -> None:
        """A portal event: counted, logged, and audited (durably, before the page answers)."""
        metrics.PORTAL_EVENTS.labels(name).inc()
        eventlog.event(log, f"portal_{name}", level, message_id=record.message_id, client=client, **fields)
        await self.audit.write({"event": f"portal_{name}", "queue_id": record.queue_id or None,
                                "portal_id": record.message_id, "recipient": record.recipient,
                                "client": client, **fields})

    async def _open_session(self, token: str, record: PortalMessage, request: web.Request) -> NoReturn:
        """Open the message: a session cookie bound to it, and a redirect to the read page."""
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(record.message_id, time.time() + SESSION_TTL,
                                              secrets.token_urlsafe(24))
        await self._event("viewed", record, request.remote)
        response = web.HTTPSeeOther(f"/m/{token}/read")
        response.set_cookie("mw_session", session_id, httponly=True, samesite="Strict", secure=self.secure,
                            path="/m/", max_age=int(SESSION_TTL))
        raise response

    async def set_password(self, request: web.Request) -> web.Response:
        _, record, _ = self._message(request)
        form = await self._session_form(request, record)
        try:
            await asyncio.to_thread(self.passwords.set, record.recipient, form.get("password", "")[:200])
        except ValueError as exc:
            return await self.read(request, note=str(exc).capitalize() + ".")
        eventlog.event(log, "portal_password_set", message_id=record.message_id, client=request.remote)
        return await self.read(request, note="Your password is set. Use it to open your next messages.")

    def _required_session(self, request: web.Request, record: PortalMessage) -> _Session:
        session = self._session(request, record)
        if session is None:
            raise web.HTTPForbidden()
        return session

    async def _session_form(self, request: web.Request, record: PortalMessage) -> dict[str, str]:
        """A posted form of an open session, its CSRF token checked (403 otherwise)."""
        session = self._required_session(request, record)
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            raise web.HTTPForbidden()
        return {key: str(value) for key, value in form.items()}

    def _session(self, request: web.Request, record: PortalMessage) -> _Session | None:
        session = self._sessions.get(request.cookies.get("mw_session", ""))
        if session is None or session.expires < time.time() or session.message_id != record.message_id:
            return None
        return session

    async def read(self, request: web.Request, *, replied: bool = False, note: str = "") -> web.Response:
        token, record, content = self._message(request)
        session = self._session(request, record)
        if session is None:
            raise web.HTTPSeeOther(f"/m/{token}")
        message = _parse(content)
        plain = message.get_body(("plain",))
        html = message.get_body(("html",))
        response = self._page(
            "read.html.j2", title="Secure message", token=token, csrf=session.csrf,
            sender=str(message.get("From", record.sender)), subject=str(message.get("Subject", "")),
            date=str(message.get("Date", "")), expires=_when(record.expires), replied=replied, note=note,
            offer_password=not self.passwords.has(record.recipient),
            html_body=plain is None and html is not None,
            text_body=plain.get_content() if plain is not None else "",
            attachments=[{"name": a.get_filename() or f"attachment-{i + 1}",
                          "size": _size(len(a.get_payload(decode=True) or b""))}
                         for i, a in enumerate(message.iter_attachments())])
        return self._with_csrf(response, session.csrf)

    async def body(self, request: web.Request) -> web.Response:
        _, record, content = self._message(request)
        self._required_session(request, record)
        html = _parse(content).get_body(("html",))
        markup = _SCRIPT.sub("", html.get_content()) if html is not None else ""
        response = web.Response(text=markup, content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = _BODY_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    async def attachment(self, request: web.Request) -> web.Response:
        _, record, content = self._message(request)
        self._required_session(request, record)
        attachments = list(_parse(content).iter_attachments())
        index = request.match_info["index"]
        if not index.isdigit() or int(index) >= len(attachments):
            raise web.HTTPNotFound()
        part = attachments[int(index)]
        name = (part.get_filename() or f"attachment-{int(index) + 1}").replace('"', "")
        await self._event("downloaded", record, request.remote, attachment=int(index) + 1)
        return web.Response(body=part.get_payload(decode=True) or b"",
                            content_type="application/octet-stream",
                            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{_quote(name)}"})

    async def reply(self, request: web.Request) -> web.Response:
        _, record, content = self._message(request)
        form = await self._session_form(request, record)
        text = form.get("text", "")[:MAX_REPLY].strip()
        if text:
            await self.send_reply(record, _parse(content), text)
            await self._event("replied", record, request.remote)
        return await self.read(request, replied=bool(text))

    def _unsubscribe_token(self, request: web.Request) -> tuple[str, str]:
        assert self.unsubscribe_hook is not None
        found = self.unsubscribe_hook.read(request.match_info["token"][:600])
        if found is None:
            raise self._notice("Link not valid", "This unsubscribe link is not valid.", 404)
        return found

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        """A person following the link confirms with a button (a GET never unsubscribes: mail
        scanners open links)."""
        address, domain = self._unsubscribe_token(request)
        html = self._templates.get_template("unsubscribe.html.j2").render(
            branding=self.config.branding, title="Unsubscribe", address=_mask(address), domain=domain)
        return web.Response(text=html, content_type="text/html")

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """RFC 8058 one-click: a POST of List-Unsubscribe=One-Click (or the page's button)."""
        address, domain = self._unsubscribe_token(request)
        assert self.unsubscribe_hook is not None
        await self.unsubscribe_hook.done(address, domain)
        raise self._notice("Unsubscribed", f"{_mask(address)} will get no more of these emails from "
                                           f"{domain}.", 200)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def css(self, request: web.Request) -> web.Response:
        return web.Response(body=self._css, content_type="text/css")


_ERRORS: dict[int, type[web.HTTPException]] = {
    200: web.HTTPOk, 403: web.HTTPForbidden, 404: web.HTTPNotFound, 410: web.HTTPGone,
    500: web.HTTPInternalServerError}


def _parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _mask(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 2)}@{domain}"


def _when(timestamp: float) -> str:
    return time.strftime("%d %B %Y, %H:%M UTC", time.gmtime(timestamp))


def _size(count: int) -> str:
    return f"{count / 1024:.0f} KB" if count >= 1024 else f"{count} bytes"


def _quote(name: str) -> str:
    return quote(name, safe="")
