"""Showing a sender's message in our own web pages (the portal to its recipient, the console to
a reviewer) without letting it act: its HTML is served only as a sandboxed frame with no
scripts, no forms, no navigation and nothing remote, its text is escaped by the templates, and
attachments are downloads, never rendered. The pages around it carry PAGE_CSP."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import time
from collections.abc import Callable
from email.message import EmailMessage, MIMEPart
from typing import Any

from aiohttp import web

from gateway import eventlog
from gateway.httpheaders import Handler

PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' https:; frame-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# The body is a document of the sender's: sandboxed even if opened on its own, no forms, no
# navigation targets, nothing remote.
BODY_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            "form-action 'none'; base-uri 'none'; frame-ancestors 'self'")
_SCRIPT = re.compile(r"<script\b.*?</script\s*>", re.IGNORECASE | re.DOTALL)
_REFRESH = re.compile(r"<meta\b[^>]*http-equiv\s*=\s*[\"']?\s*refresh[^>]*>", re.IGNORECASE)


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: MIMEPart) -> str:
    """A text part's content; an unknown or lying charset falls back to UTF-8 with
    replacement characters instead of failing the page."""
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError, ValueError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def html_frame(message: EmailMessage) -> str:
    """The HTML body for the sandboxed frame (scripts and refreshes taken out as well)."""
    html = message.get_body(("html",))
    return _REFRESH.sub("", _SCRIPT.sub("", text_of(html))) if html is not None else ""


def secure_headers(headers: Any, *, https: bool, csp: str = PAGE_CSP) -> None:
    """What every page of ours carries: a CSP, no caching, no referrer, no sniffing, no framing."""
    headers.setdefault("Content-Security-Policy", csp)
    headers["Cache-Control"] = "no-store"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Content-Type-Options"] = "nosniff"
    headers.setdefault("X-Frame-Options", "DENY")
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000"


def secure_pages(app_name: str, logger: logging.Logger, *, https: bool,
                 failed: Callable[[], web.Response]) -> Any:
    """The middleware of a web app of ours: `secure_headers` on every answer (redirects and
    errors too), and an unexpected error answered with the app's own `failed` page (logged as
    APP_error with its type only: an exception's text may quote a message)."""
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            secure_headers(exc.headers, https=https)
            raise
        except Exception as exc:  # a page that fails still answers as a page of ours
            eventlog.event(logger, f"{app_name}_error", logging.ERROR, path=request.path.split("/")[1],
                           error=type(exc).__name__)
            logger.debug("%s error", app_name, exc_info=exc)
            response = failed()
        secure_headers(response.headers, https=https)
        return response
    return middleware


def when(timestamp: float) -> str:
    return time.strftime("%d %B %Y, %H:%M UTC", time.gmtime(timestamp))


def size(count: int) -> str:
    return f"{count / 1024:.0f} KB" if count >= 1024 else f"{count} bytes"
