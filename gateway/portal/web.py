"""The portal's web app (aiohttp, server-rendered, no JavaScript needed).

Flow: the link ``/m/TOKEN`` shows who the passcode goes to (masked); "Send me a passcode" mails a
one-time code to the recipient; the right code opens a session (an HttpOnly, SameSite=Strict
cookie, Secure over https) bound to that message only; then the message, its attachments (always
downloaded, never rendered) and a reply form. The link alone never shows content.

Every response carries a strict CSP, no-store caching, no referrer, nosniff and frame denial;
HSTS when the portal's base URL is https. Forms carry a CSRF token (double-submit cookie). An
HTML body is shown in a sandboxed frame (no scripts, no same-origin) served with its own CSP that
blocks remote images and everything else remote; the body URL answers only as that frame.
Requests for passcodes are limited per message (see `passcode`) and per client address.

Attempts are counted atomically: every check of a passcode or password loads the record, counts
the attempt and stores it under one lock per message, before the answer is given, so parallel
requests cannot share one count, and a used passcode is consumed before the message opens.
Behind a reverse proxy in `portal.trusted_proxies`, the client is the one X-Forwarded-For names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
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
from gateway.httpheaders import server_header
from gateway.portal import passcode
from gateway.portal.passwords import MIN_LENGTH, RecipientPasswords
from gateway.portal.store import PortalError, PortalMessage, PortalStore, Tombstone, message_id_of
from gateway.safeview import BODY_CSP, html_frame, parse, secure_pages, size, text_of, when
from gateway.typedyaml import address_in

log = logging.getLogger("mailward.portal")

SendCode = Callable[[PortalMessage, str], Awaitable[None]]
# A notice to the recipient's mailbox (subject, text), e.g. "your password was changed".
SendNotice = Callable[[PortalMessage, str, str], Awaitable[None]]


class Unsubscribe(Protocol):
    """What the one-click endpoint needs: read a link's token, record the unsubscribe."""

    def read(self, token: str) -> tuple[str, str] | None: ...
    async def done(self, address: str, sender_domain: str) -> None: ...

SendReply = Callable[[PortalMessage, EmailMessage, str], Awaitable[None]]

SESSION_TTL = 1800.0
MAX_REPLY = 20_000
PER_IP_CODES = 10  # passcode requests per client address per hour
LOCKED_TEXT = "Too many wrong attempts. The message is locked for 15 minutes."


@dataclass
class _Session:
    message_id: str
    expires: float
    csrf: str


class PortalApp:
    def __init__(self, store: PortalStore, config: PortalConfig, *, send_code: SendCode,
                 send_reply: SendReply, audit: Audit | None = None,
                 unsubscribe: Unsubscribe | None = None, send_notice: SendNotice | None = None,
                 passwords: RecipientPasswords | None = None) -> None:
        self.store = store
        self.audit = audit or Audit.off()
        self.unsubscribe_hook = unsubscribe
        self.config = config
        self.send_code = send_code
        self.send_reply = send_reply
        self.send_notice = send_notice
        self.secure = config.base_url.startswith("https://")
        self.passwords = passwords or RecipientPasswords(store.password_hashes())
        # Sessions are signed cookies, not server state: any node with the portal key reads them.
        self._session_key = store.session_key()
        self._code_requests: dict[str, list[float]] = {}
        # One lock per portal message, held from loading its record to storing it again.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._proxies = tuple(net.network for net in config.trusted_proxies)
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.portal", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined)
        self._css = resources.files("gateway.portal").joinpath("templates/portal.css").read_bytes()

    def application(self) -> web.Application:
        failed = secure_pages("portal", log, https=self.secure, failed=lambda: self._notice_page(
            "Something went wrong", "Please try again later.", 500))
        app = web.Application(middlewares=[server_header, failed], client_max_size=64 * 1024)
        app.router.add_get("/m/{token}", self.start)
        app.router.add_post("/m/{token}/code", self.request_code)
        app.router.add_post("/m/{token}/verify", self.verify)
        app.router.add_post("/m/{token}/password", self.password_login)
        app.router.add_post("/m/{token}/set-password", self.set_password)
        app.router.add_post("/m/{token}/password-code", self.password_code)
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

    # -- pages ------------------------------------------------------------------------------

    def _page(self, template: str, status: int = 200, **values: Any) -> web.Response:
        html = self._templates.get_template(template).render(branding=self.config.branding, **values)
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)

    def _notice(self, title: str, text: str, status: int) -> web.HTTPException:
        """A page that ends the request: raise it."""
        return _ERRORS[status](text=self._notice_html(title, text), content_type="text/html")

    def _notice_page(self, title: str, text: str, status: int) -> web.Response:
        return web.Response(text=self._notice_html(title, text), content_type="text/html", status=status)

    def _notice_html(self, title: str, text: str) -> str:
        return self._templates.get_template("notice.html.j2").render(
            branding=self.config.branding, title=title, text=text)

    def client(self, request: web.Request) -> str:
        """The visitor's address: the peer, or behind a trusted proxy the nearest address in
        X-Forwarded-For that is not itself a trusted proxy."""
        peer = request.remote or "unknown"
        if not self._proxies or not address_in(peer, self._proxies):
            return peer
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", [])
                for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops[-20:]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a forged or garbled entry: stop trusting the chain here
            if not address_in(hop, self._proxies):
                return hop
        return hops[0] if hops else peer

    @contextlib.asynccontextmanager
    async def _lock(self, message_id: str) -> AsyncIterator[None]:
        """This process's lock of the message, then the store's (other processes and nodes)."""
        lock = self._locks.get(message_id)
        if lock is None:
            lock = self._locks[message_id] = asyncio.Lock()
        async with lock:
            held = self.store.lock(message_id)
            await asyncio.to_thread(held.__enter__)
            try:
                yield
            finally:
                await asyncio.to_thread(held.__exit__, None, None, None)

    async def _update(self, record: PortalMessage, content: bytes, **changes: object) -> PortalMessage:
        return await asyncio.to_thread(functools.partial(self.store.update, record, content, **changes))

    async def _message(self, request: web.Request) -> tuple[str, PortalMessage, bytes]:
        """The link's token and its message; a clear page (raised) when there is none."""
        token = request.match_info["token"]
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", token):
            raise self._notice("Message not found", "This link is not valid.", 404)
        try:
            found = await asyncio.to_thread(self.store.load, message_id_of(token))
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
        token, record, _ = await self._message(request)
        csrf = self._csrf(request)
        has_password = await asyncio.to_thread(self.passwords.has, record.recipient)
        return self._with_csrf(self._page(
            "start.html.j2", title="You have a secure message", token=token, csrf=csrf,
            masked=_mask(record.recipient), message=message, code_sent=code_sent,
            has_password=has_password and not passcode.locked(record),
            expires=when(record.expires)), csrf)

    async def request_code(self, request: web.Request) -> web.Response:
        _, record, _ = await self._message(request)
        if await self._form(request) is None:
            raise self._notice("Please try again", "The form expired; open the link again.", 403)
        if not await self._issue_code(request, record):
            return await self.start(request, message="Too many passcodes were requested. Please wait "
                                                     "a few minutes and try again.", code_sent=True)
        return await self.start(request, message=f"We sent a passcode to {_mask(record.recipient)}.",
                                code_sent=True)

    async def _issue_code(self, request: web.Request, record: PortalMessage) -> bool:
        """Mail a new passcode to the recipient, within the per-message and per-client limits."""
        client = self.client(request)
        async with self._lock(record.message_id):
            _, record, content = await self._message(request)  # as stored now, not as first loaded
            now = time.time()
            recent = [t for t in self._code_requests.get(client, []) if now - t < 3600]
            if len(recent) >= PER_IP_CODES or not passcode.may_send(record, now):
                eventlog.event(log, "portal_code_refused", logging.WARNING, message_id=record.message_id,
                               client=client, reason="locked" if passcode.locked(record, now) else "rate")
                return False
            self._code_requests[client] = [*recent, now]
            code, record = passcode.issue(record, now)
            await self._update(record, content)
        await self.send_code(record, code)
        await self._event("code_sent", record, client)
        return True

    async def verify(self, request: web.Request) -> web.Response:
        token, record, content = await self._message(request)
        form = await self._form(request)
        if form is None:
            raise self._notice("Please try again", "The form expired; open the link again.", 403)
        async with self._lock(record.message_id):
            token, record, content = await self._message(request)  # as stored now, not as first loaded
            check = passcode.verify(record, form.get("code", "")[:12])
            await self._update(check.record, content)
        if not check.ok:
            await self._event("locked" if check.reason == "locked" else "code_failed", record,
                              self.client(request), logging.WARNING, reason=check.reason)
            words = {"locked": "Too many wrong passcodes. The message is locked for 15 minutes.",
                     "expired": "That passcode has expired. Request a new one.",
                     "none": "Request a passcode first."}.get(check.reason, "That passcode is not right.")
            return await self.start(request, message=words, code_sent=check.reason != "locked")
        await self._open_session(token, record, request)

    async def password_login(self, request: web.Request) -> web.Response:
        token, record, content = await self._message(request)
        form = await self._form(request)
        if form is None:
            raise self._notice("Please try again", "The form expired; open the link again.", 403)
        async with self._lock(record.message_id):
            token, record, content = await self._message(request)
            if passcode.locked(record):
                return await self.start(request, message=LOCKED_TEXT)
            record, ok = await self._check_password(record, content, form.get("password", "")[:200])
        if ok:
            await self._open_session(token, record, request)
        locked = passcode.locked(record)
        await self._event("locked" if locked else "code_failed", record, self.client(request),
                          logging.WARNING, reason="password")
        return await self.start(request, message=LOCKED_TEXT if locked else "That password is not right.")

    async def _check_password(self, record: PortalMessage, content: bytes,
                              password: str) -> tuple[PortalMessage, bool]:
        """Check the recipient's password; called under the record's lock. The attempt is
        counted and stored as a failure first (a wrong password counts like a wrong passcode)
        and taken back only when the password is right, so a crash or a parallel request never
        gets an attempt for free."""
        counted = await self._update(passcode.count_failure(record), content)
        if not await asyncio.to_thread(self.passwords.check, record.recipient, password):
            return counted, False
        return await self._update(counted, content, failed_codes=0, locked_until=0.0,
                                 code_hash=record.code_hash), True

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
        session_id = self._sign(_Session(record.message_id, time.time() + SESSION_TTL,
                                         secrets.token_urlsafe(24)))
        await self._event("viewed", record, self.client(request))
        response = web.HTTPSeeOther(f"/m/{token}/read")
        response.set_cookie("mw_session", session_id, httponly=True, samesite="Strict", secure=self.secure,
                            path="/m/", max_age=int(SESSION_TTL))
        raise response

    async def set_password(self, request: web.Request) -> web.Response:
        """Set the recipient's password. Replacing one that exists takes the current password or
        a fresh passcode mailed to the address: an open session alone is not enough, since it
        may be on any one of the recipient's messages. The recipient is told by mail."""
        _, record, _ = await self._message(request)
        form = await self._session_form(request, record)
        new_password = form.get("password", "")[:200]
        if len(new_password) < MIN_LENGTH:
            return await self.read(request, note=f"A password has at least {MIN_LENGTH} characters.")
        client = self.client(request)
        async with self._lock(record.message_id):
            _, record, content = await self._message(request)
            changing = await asyncio.to_thread(self.passwords.has, record.recipient)
            if changing:
                if passcode.locked(record):
                    return await self.read(request, note=LOCKED_TEXT)
                if form.get("code"):
                    check = passcode.verify(record, form["code"][:12])
                    record, ok = await self._update(check.record, content), check.ok
                else:
                    record, ok = await self._check_password(record, content, form.get("current", "")[:200])
                if not ok:
                    locked = passcode.locked(record)
                    await self._event("locked" if locked else "code_failed", record, client, logging.WARNING,
                                      reason="password_change")
                    return await self.read(request, note=LOCKED_TEXT if locked else
                                           "That is not your current password or a valid code.")
            await asyncio.to_thread(self.passwords.set, record.recipient, new_password)
        await self._event("password_changed" if changing else "password_set", record, client)
        if self.send_notice is not None:
            await self.send_notice(record, "Your secure message password was " +
                                   ("changed" if changing else "set"), _PASSWORD_CHANGED_TEXT)
        return await self.read(request, note="Your password is set. Use it to open your next messages.")

    async def password_code(self, request: web.Request) -> web.Response:
        """A passcode mailed to the address, to change a password that was forgotten."""
        _, record, _ = await self._message(request)
        await self._session_form(request, record)
        if not await self._issue_code(request, record):
            return await self.read(request, note="Too many passcodes were requested. Please wait a few "
                                                 "minutes and try again.")
        return await self.read(request, code_sent=True,
                               note=f"We sent a passcode to {_mask(record.recipient)}.")

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

    def _sign(self, session: _Session) -> str:
        body = f"{session.message_id}.{session.expires:.0f}.{session.csrf}"
        return f"{body}.{hmac.new(self._session_key, body.encode(), 'sha256').hexdigest()}"

    def _session(self, request: web.Request, record: PortalMessage) -> _Session | None:
        """The session its cookie names, if the MAC holds, it is for `record` and not expired."""
        body, _, mac = request.cookies.get("mw_session", "")[:300].rpartition(".")
        expected = hmac.new(self._session_key, body.encode(), "sha256").hexdigest()
        if not body or not hmac.compare_digest(mac, expected):
            return None
        message_id, expires, csrf = [*body.split(".", 2), "", ""][:3]
        if message_id != record.message_id or not expires.isdigit() or float(expires) < time.time():
            return None
        return _Session(message_id, float(expires), csrf)

    async def read(self, request: web.Request, *, replied: bool = False, note: str = "",
                   code_sent: bool = False) -> web.Response:
        token, record, content = await self._message(request)
        session = self._session(request, record)
        if session is None:
            raise web.HTTPSeeOther(f"/m/{token}")
        message = parse(content)
        plain = message.get_body(("plain",))
        html = message.get_body(("html",))
        response = self._page(
            "read.html.j2", title="Secure message", token=token, csrf=session.csrf,
            sender=str(message.get("From", record.sender)), subject=str(message.get("Subject", "")),
            date=str(message.get("Date", "")), expires=when(record.expires), replied=replied, note=note,
            has_password=await asyncio.to_thread(self.passwords.has, record.recipient), code_sent=code_sent,
            html_body=plain is None and html is not None,
            text_body=text_of(plain) if plain is not None else "",
            attachments=[{"name": a.get_filename() or f"attachment-{i + 1}",
                          "size": size(len(a.get_payload(decode=True) or b""))}
                         for i, a in enumerate(message.iter_attachments())])
        return self._with_csrf(response, session.csrf)

    async def body(self, request: web.Request) -> web.Response:
        _, record, content = await self._message(request)
        self._required_session(request, record)
        # Only as the frame of the read page: opened on its own, the sender's HTML would be a
        # page of our origin (browsers that send no Sec-Fetch-Dest are not supported).
        if request.headers.get("Sec-Fetch-Dest", "") != "iframe":
            raise self._notice("Not available", "Open the message from its link.", 403)
        markup = html_frame(parse(content))
        response = web.Response(text=markup, content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = BODY_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    async def attachment(self, request: web.Request) -> web.Response:
        _, record, content = await self._message(request)
        self._required_session(request, record)
        attachments = list(parse(content).iter_attachments())
        index = request.match_info["index"]
        if not index.isdigit() or int(index) >= len(attachments):
            raise web.HTTPNotFound()
        part = attachments[int(index)]
        name = (part.get_filename() or f"attachment-{int(index) + 1}").replace('"', "")
        await self._event("downloaded", record, self.client(request), attachment=int(index) + 1)
        return web.Response(body=part.get_payload(decode=True) or b"",
                            content_type="application/octet-stream",
                            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{_quote(name)}"})

    async def reply(self, request: web.Request) -> web.Response:
        _, record, content = await self._message(request)
        form = await self._session_form(request, record)
        text = form.get("text", "")[:MAX_REPLY].strip()
        if text:
            await self.send_reply(record, parse(content), text)
            await self._event("replied", record, self.client(request))
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


_PASSWORD_CHANGED_TEXT = (
    "The password you use to open secure messages was just set or changed.\n\n"  # noqa: S105
    "If this was you, there is nothing to do. If it was not, open your latest secure message "
    "with a passcode and set a new password, and tell the sender.\n")


def _mask(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 2)}@{domain}"


def _quote(name: str) -> str:
    return quote(name, safe="")
