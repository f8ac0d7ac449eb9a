"""The compliance console: sign-in with password and TOTP, and the held messages (quarantine)
that a reviewer opens, releases or deletes, each with a reason, each in the audit log under the
console user's name.

Server-rendered (Jinja2, as the portal), working without JavaScript, with the portal's posture:
a strict CSP on every answer, a CSRF token in every form, HttpOnly SameSite=Strict session
cookies (Secure over HTTPS), no-store. A sender's message is shown as `safeview` shows it: text
escaped, HTML only in a sandboxed frame, attachments as downloads. Viewers see who sent what to
whom and why it was held, never content, and get 403 for anything more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import jinja2
import segno
from aiohttp import web
from markupsafe import Markup

from gateway import eventlog, status
from gateway.audit import reader, trace
from gateway.audit.events import Audit
from gateway.config import Config
from gateway.console import evidence
from gateway.console.sessions import Session, Sessions
from gateway.console.users import ROLES, ConsoleUser, ConsoleUsers, Role, new_totp_secret, provisioning_uri
from gateway.errors import MailwardError
from gateway.httpheaders import server_header
from gateway.safeview import BODY_CSP, html_frame, parse, secure_pages, size, text_of, when
from gateway.spool import QueueState, Spool, new_queue_id

log = logging.getLogger("mailward.console")
COOKIE = "mw_console"
# Release with protection forced: the methods the released copy must use, strongest first.
PROTECTED_RELEASES = {"release-protected": ("tls", "smime", "pgp", "portal"), "release-portal": ("portal",)}
MAX_REASON = 500
Released = Callable[[str], None]


class ConsoleApp:
    def __init__(self, gateway_config: Config, users: ConsoleUsers, spool: Spool, audit: Audit, *,
                 released: Released, https: bool) -> None:
        self.gateway_config = gateway_config  # trace, reports and health read the gateway's state
        self.config = config = gateway_config.console
        self.users = users
        self.spool = spool
        self.audit = audit
        self.hostname = gateway_config.hostname
        self.released = released  # a released message is in incoming/: wake delivery
        self.https = https
        self.sessions = Sessions(float(config.idle_timeout))
        self._templates = jinja2.Environment(loader=jinja2.PackageLoader("gateway.console", "templates"),
                                             autoescape=True, undefined=jinja2.StrictUndefined)
        self._css = resources.files("gateway.console").joinpath("templates/console.css").read_bytes()

    def application(self) -> web.Application:
        pages = secure_pages("console", log, https=self.https, failed=lambda: self._page(
            "error.html.j2", None, status=500, title="Something went wrong"))
        app = web.Application(middlewares=[server_header, pages], client_max_size=256 * 1024)
        app.router.add_get("/", self.home)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_get("/login/code", self.code_page)
        app.router.add_post("/login/code", self.code)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/held", self.held)
        app.router.add_post("/held", self.held_action)
        app.router.add_get("/held/{queue_id}", self.held_message)
        app.router.add_get("/held/{queue_id}/body", self.held_body)
        app.router.add_get("/held/{queue_id}/attachment/{index}", self.held_attachment)
        app.router.add_get("/trace", self.trace)
        app.router.add_get("/reports", self.reports)
        app.router.add_get("/reports.csv", self.reports_csv)
        app.router.add_get("/reports/evidence.zip", self.evidence)
        app.router.add_get("/health", self.health_page)
        app.router.add_get("/users", self.users_page)
        app.router.add_post("/users", self.users_action)
        app.router.add_get("/static/console.css", self.css)
        app.router.add_get("/healthz", self.health)
        return app

    # -- pages and sessions ---------------------------------------------------------------------

    def _page(self, template: str, session: Session | None, status: int = 200, **values: Any) -> web.Response:
        user = self.users.get(session.user) if session is not None and session.stage == "in" else None
        html = self._templates.get_template(template).render(user=user, csrf=session.csrf if session else "",
                                                             hostname=self.hostname, **values)
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE, "")[:100])

    def _signed_in(self, request: web.Request, role: Role = "viewer") -> tuple[Session, ConsoleUser]:
        """The signed-in session and its user with at least `role`: else to the sign-in page, or 403."""
        session = self._session(request)
        user = self.users.get(session.user) if session is not None and session.stage == "in" else None
        if session is None or user is None:
            raise web.HTTPSeeOther("/login")
        if not user.may(role):
            raise web.HTTPForbidden(text=f"This needs the {role} role.")
        return session, user

    async def _form(self, request: web.Request, session: Session | None) -> dict[str, Any]:
        """A posted form whose CSRF token matches the session's (or, before one, the cookie's)."""
        form = await request.post()
        expected = session.csrf if session is not None else request.cookies.get("mw_console_csrf", "")
        if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            raise web.HTTPForbidden(text="The form expired; open the page again.")
        return {key: form.getall(key) if key == "queue_id" else str(value) for key, value in form.items()}

    def _cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="Strict", secure=self.https, path="/")

    async def _audit(self, event: str, user: str, request: web.Request, **fields: Any) -> None:
        eventlog.event(log, event, user=user, client=request.remote, **{k: v for k, v in fields.items()
                                                                         if k != "reason"})
        await self.audit.write({"event": event, "queue_id": fields.pop("queue_id", None), "user": user,
                                "by": "console", "client": request.remote, **fields})

    async def home(self, request: web.Request) -> web.Response:
        self._signed_in(request)
        raise web.HTTPSeeOther("/held")

    async def login_page(self, request: web.Request, message: str = "") -> web.Response:
        csrf = request.cookies.get("mw_console_csrf") or secrets.token_urlsafe(24)
        html = self._templates.get_template("login.html.j2").render(user=None, csrf=csrf, message=message,
                                                                    hostname=self.hostname)
        response = web.Response(text=html, content_type="text/html", charset="utf-8",
                                status=401 if message else 200)
        self._cookie(response, "mw_console_csrf", csrf)
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await self._form(request, None)
        name = form.get("name", "")[:64]
        user = await asyncio.to_thread(self.users.check_password, name, form.get("password", ""))
        if user is None:
            known = self.users.get(name)
            reason = "locked" if known is not None and known.locked() else "password"
            await self._audit("console_signin_failed", name if known else "(unknown)", request, reason=reason)
            return await self.login_page(request, "Wrong name or password, or the account is locked for a "
                                                  "while after too many failures.")
        if user.totp_secret:
            session_id = self.sessions.start(user.name, "code")
        else:
            session_id = self.sessions.start(user.name, "enrol", new_totp_secret())
        response = web.HTTPSeeOther("/login/code")
        self._cookie(response, COOKIE, session_id)
        raise response

    async def code_page(self, request: web.Request, message: str = "") -> web.Response:
        session = self._session(request)
        if session is None or session.stage == "in":
            raise web.HTTPSeeOther("/login" if session is None else "/held")
        qr = secret = ""
        if session.stage == "enrol":
            uri = provisioning_uri(session.enrol_secret, session.user, f"Mailward {self.hostname}")
            qr, secret = segno.make(uri, error="m").svg_inline(scale=4, title="TOTP enrolment"), \
                session.enrol_secret
        return self._page("code.html.j2", session, status=401 if message else 200, message=message,
                          enrolling=session.stage == "enrol", qr=Markup(qr), secret=secret)  # noqa: S704 - segno's own SVG

    async def code(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None or session.stage == "in":
            raise web.HTTPSeeOther("/login")
        form = await self._form(request, session)
        user = self.users.get(session.user)
        if user is None or not await asyncio.to_thread(self.users.check_code, user, form.get("code", ""),
                                                       session.enrol_secret or None):
            current = self.users.get(session.user)
            if current is None or current.locked():
                self.sessions.end_user(session.user)
                await self._audit("console_signin_failed", session.user, request, reason="locked")
                raise web.HTTPSeeOther("/login")
            await self._audit("console_signin_failed", session.user, request, reason="code")
            return await self.code_page(request, "That code is not right.")
        if session.stage == "enrol":
            await self._audit("console_totp_enrolled", session.user, request)
        session.stage, session.enrol_secret = "in", ""
        await self._audit("console_signin", session.user, request, role=user.role)
        raise web.HTTPSeeOther("/held")

    async def logout(self, request: web.Request) -> web.Response:
        session, user = self._signed_in(request)
        await self._form(request, session)
        self.sessions.end(request.cookies.get(COOKIE, ""))
        await self._audit("console_signout", user.name, request)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- held messages ----------------------------------------------------------------------------

    async def held(self, request: web.Request, note: str = "") -> web.Response:
        session, user = self._signed_in(request)
        rows = await asyncio.to_thread(self._held_rows)
        return self._page("held.html.j2", session, rows=rows, note=note, can_act=user.may("reviewer"))

    def _held_rows(self) -> list[dict[str, Any]]:
        now, flag_age = time.time(), float(self.config.held_flag_age)
        rows: list[dict[str, Any]] = []
        for queue_id in self.spool.ids(QueueState.HOLD):
            try:
                message = self.spool.load(queue_id, QueueState.HOLD)
            except (MailwardError, OSError):
                continue  # released or deleted while listed
            rows.append({"queue_id": queue_id, "received": when(message.received_at),
                         "sender": message.envelope.sender or "<>",
                         "recipients": [r.address for r in message.envelope.recipients],
                         "rules": list(message.policy.rules), "action": message.policy.action,
                         "size": size(message.size), "age_hours": int((now - message.received_at) // 3600),
                         "old": now - message.received_at > flag_age,
                         "detectors": dict(message.policy.detectors)})
        return sorted(rows, key=lambda r: r["queue_id"])

    def _held(self, queue_id: str) -> Any:
        if queue_id not in self.spool.ids(QueueState.HOLD):
            raise web.HTTPNotFound(text="No such held message (released or deleted already?).")
        return self.spool.read(queue_id, QueueState.HOLD)

    async def held_message(self, request: web.Request) -> web.Response:
        session, user = self._signed_in(request)
        queue_id = request.match_info["queue_id"]
        message, content = await asyncio.to_thread(self._held, queue_id)
        shown: dict[str, Any] = {}
        if user.may("reviewer"):
            parsed = parse(content)
            plain = parsed.get_body(("plain",))
            shown = {"subject": str(parsed.get("Subject", "")), "from": str(parsed.get("From", "")),
                     "text_body": text_of(plain) if plain is not None else "",
                     "has_html": parsed.get_body(("html",)) is not None,
                     "attachments": [{"name": a.get_filename() or f"attachment-{i + 1}",
                                      "size": size(len(a.get_payload(decode=True) or b""))}
                                     for i, a in enumerate(parsed.iter_attachments())]}
            await self._audit("console_viewed", user.name, request, queue_id=queue_id)
        return self._page("held_message.html.j2", session, message=message, shown=shown,
                          received=when(message.received_at), size=size(message.size),
                          can_act=user.may("reviewer"))

    async def held_body(self, request: web.Request) -> web.Response:
        self._signed_in(request, "reviewer")
        if request.headers.get("Sec-Fetch-Dest", "") != "iframe":
            raise web.HTTPForbidden(text="Only as the frame of the message page.")
        _, content = await asyncio.to_thread(self._held, request.match_info["queue_id"])
        response = web.Response(text=html_frame(parse(content)), content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = BODY_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    async def held_attachment(self, request: web.Request) -> web.Response:
        _, user = self._signed_in(request, "reviewer")
        queue_id = request.match_info["queue_id"]
        _, content = await asyncio.to_thread(self._held, queue_id)
        attachments = list(parse(content).iter_attachments())
        index = request.match_info["index"]
        if not index.isdigit() or int(index) >= len(attachments):
            raise web.HTTPNotFound()
        number = int(index) + 1
        await self._audit("console_downloaded", user.name, request, queue_id=queue_id, attachment=number)
        return web.Response(body=attachments[number - 1].get_payload(decode=True) or b"",
                            content_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="attachment-{number}"'})

    async def held_action(self, request: web.Request) -> web.Response:
        """Release or delete the selected held messages, with the reviewer's reason."""
        session, user = self._signed_in(request, "reviewer")
        form = await self._form(request, session)
        action, reason = form.get("action", ""), str(form.get("reason", "")).strip()[:MAX_REASON]
        queue_ids = [str(q) for q in form.get("queue_id", [])][:1000]
        if action not in ("release", "delete", *PROTECTED_RELEASES):
            raise web.HTTPBadRequest(text="Choose release, release protected, or delete.")
        if not reason:
            return await self.held(request, note="Give a reason: it goes into the audit log.")
        if not queue_ids:
            return await self.held(request, note="Select at least one message.")
        done = 0
        for queue_id in queue_ids:
            extra: dict[str, Any] = {}
            try:
                if action == "release":
                    await asyncio.to_thread(self.spool.move, queue_id, QueueState.INCOMING,
                                            only_from=(QueueState.HOLD,))
                elif await asyncio.to_thread(self.spool.locate, queue_id) is not QueueState.HOLD:
                    continue  # only held messages are deleted or released here
                elif action == "delete":
                    await asyncio.to_thread(self.spool.remove, queue_id)
                else:
                    methods = PROTECTED_RELEASES[action]
                    new_id = await asyncio.to_thread(self._release_protected, queue_id, methods)
                    extra = {"protection": action.removeprefix("release-"), "new_queue_id": new_id}
            except (MailwardError, OSError):
                continue  # not held (any more): another reviewer was quicker
            await self._audit("deleted" if action == "delete" else "released", user.name, request,
                              queue_id=queue_id, reason=reason, **extra)
            if action != "delete":
                self.released(extra.get("new_queue_id", queue_id))
            done += 1
        word = "deleted" if action == "delete" else "released"
        return await self.held(request, note=f"{done} message(s) {word}.")

    # -- trace, reports, health ---------------------------------------------------------------------

    async def trace(self, request: web.Request) -> web.Response:
        """Messages by sender, recipient, Message-ID or queue id in a period: a timeline each."""
        session, user = self._signed_in(request)
        asked = {key: request.query.get(key, "").strip()[:320]
                 for key in ("sender", "recipient", "message_id", "queue_id", "since", "until")}
        found: list[trace.Timeline] = []
        problem = ""
        if any(asked[key] for key in ("sender", "recipient", "message_id", "queue_id")):
            try:
                since, until = _period(asked["since"], asked["until"])
            except ValueError as exc:
                problem = str(exc)
            else:
                message_id = asked["message_id"]
                if message_id and not message_id.startswith("<"):
                    message_id = f"<{message_id}>"
                query = reader.Query(queue_id=asked["queue_id"] or None, message_id=message_id or None,
                                     sender=asked["sender"] or None, recipient=asked["recipient"] or None,
                                     since=since, until=until)
                found = trace.timelines(await asyncio.to_thread(trace.search, self.gateway_config, query))
                await self._audit("console_traced", user.name, request, found=len(found))
        return self._page("trace.html.j2", session, asked=asked, found=found, problem=problem,
                          searched=any(asked.values()))

    async def _report(self, request: web.Request) -> tuple[Session, ConsoleUser, dict[str, Any],
                                                           list[dict[str, Any]], dict[str, str]]:
        session, user = self._signed_in(request)
        asked = {key: request.query.get(key, "").strip()[:32] for key in ("since", "until")}
        try:
            since, until = _period(asked["since"], asked["until"])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        records = await asyncio.to_thread(trace.search, self.gateway_config,
                                          reader.Query(since=since, until=until))
        asked = {"since": since.date().isoformat(), "until": until.date().isoformat()}
        return session, user, trace.report(records), records, asked

    async def reports(self, request: web.Request) -> web.Response:
        session, _, counts, _, asked = await self._report(request)
        return self._page("reports.html.j2", session, counts=counts, asked=asked, bars=_bars)

    async def reports_csv(self, request: web.Request) -> web.Response:
        _, _, counts, _, asked = await self._report(request)
        name = f"mailward-report-{asked['since']}-{asked['until']}.csv"
        return web.Response(text=trace.report_csv(counts), content_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def evidence(self, request: web.Request) -> web.Response:
        """The evidence pack of the period (see `evidence`); its making is audited with its digest."""
        _, user, counts, records, asked = await self._report(request)
        period = f"{asked['since']} to {asked['until']}"
        pack, digest = await asyncio.to_thread(evidence.build, self.gateway_config, records, counts, period,
                                               self._templates)
        await self._audit("console_evidence_pack", user.name, request, since=asked["since"],
                          until=asked["until"], records=len(records), sha256sums=digest)
        name = f"mailward-evidence-{asked['since']}-{asked['until']}.zip"
        return web.Response(body=pack, content_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{name}"', "X-Mailward-SHA256SUMS": digest})

    async def health_page(self, request: web.Request) -> web.Response:
        session, _ = self._signed_in(request)
        collected = await asyncio.to_thread(status.collect, self.gateway_config)
        return self._page("health.html.j2", session, text=status.as_text(collected))

    async def users_page(self, request: web.Request, note: str = "") -> web.Response:
        session, _ = self._signed_in(request, "admin")
        return self._page("users.html.j2", session, users=self.users.all(), note=note, roles=ROLES)

    async def users_action(self, request: web.Request) -> web.Response:
        """Add a user (or change one's role and password), or remove one (signing them out)."""
        session, admin = self._signed_in(request, "admin")
        form = await self._form(request, session)
        name, action = str(form.get("name", "")).strip()[:64], form.get("action", "")
        if action == "remove":
            if name == admin.name:
                return await self.users_page(request, "You cannot remove yourself.")
            if not await asyncio.to_thread(self.users.remove, name):
                return await self.users_page(request, f"No user {name}.")
            self.sessions.end_user(name)
            await self._audit("console_user_removed", admin.name, request, console_user=name)
            return await self.users_page(request, f"{name} removed.")
        if action != "add":
            raise web.HTTPBadRequest(text="Choose add or remove.")
        role = str(form.get("role", ""))
        try:
            new = await asyncio.to_thread(self.users.add, name, role, str(form.get("password", "")))
        except ValueError as exc:
            return await self.users_page(request, str(exc))
        self.sessions.end_user(name)  # a changed password or role starts over
        await self._audit("console_user_added" if new else "console_user_changed", admin.name, request,
                          console_user=name, role=role)
        return await self.users_page(request, f"{name} {'added' if new else 'changed'} as {role}; the second "
                                              "factor is set up at the first sign-in.")

    def _release_protected(self, queue_id: str, methods: tuple[str, ...]) -> str:
        """Release a held message for its pending recipients with protection forced: a new
        message (new queue id) whose policy protects them all by `methods`, never plaintext.
        Written (fsync'd) before the held one is removed: a crash between leaves both, not none."""
        message, content = self.spool.read(queue_id, QueueState.HOLD)
        pending = message.pending_recipients()
        envelope = dataclasses.replace(message.envelope,
                                       recipients=tuple(message.envelope.recipients[i] for i in pending))
        policy = dataclasses.replace(message.policy, action="encrypt", protect=tuple(range(len(pending))),
                                     methods=methods, rules=(*message.policy.rules, "console-release"))
        released = dataclasses.replace(message, queue_id=new_queue_id(), envelope=envelope, policy=policy,
                                       statuses=())
        self.spool.store_sync(released, content)
        self.spool.remove(queue_id)
        return released.queue_id

    async def css(self, request: web.Request) -> web.Response:
        return web.Response(body=self._css, content_type="text/css")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")



def _period(since: str, until: str) -> tuple[datetime.datetime, datetime.datetime]:
    """[since, until] as whole UTC days (until included); default the last 7 days."""
    today = datetime.datetime.now(datetime.UTC).date()
    try:
        first = datetime.date.fromisoformat(since) if since else today - datetime.timedelta(days=6)
        last = datetime.date.fromisoformat(until) if until else today
    except ValueError:
        raise ValueError("dates are YYYY-MM-DD") from None
    if last < first:
        raise ValueError("the period ends before it starts")
    start = datetime.datetime(first.year, first.month, first.day, tzinfo=datetime.UTC)
    end = datetime.datetime(last.year, last.month, last.day, tzinfo=datetime.UTC) + datetime.timedelta(days=1)
    return start, end


def _bars(counts: dict[str, int]) -> list[dict[str, Any]]:
    """Rows of a horizontal bar chart (drawn as SVG by the template): label, value, width in %."""
    most = max(counts.values(), default=0) or 1
    return [{"label": label, "value": value, "width": round(100 * value / most, 1)}
            for label, value in counts.items()]
