"""HTTP submission: ``POST /api/v1/messages`` (SPEC section 7, `docs/openapi.yaml`).

A request is either structured fields (from, reply_to, subject, text, html, attachments, headers,
tags) or a complete RFC 5322 message (`content`, text or base64), and a list of recipients, each
with its own `substitutions`: ``{{name}}`` in subject, text and html becomes that recipient's
value (HTML-escaped in html unless written ``{{{name}}}``; an unknown name is that recipient's
error, not an empty string). Every recipient becomes its own message and goes through the same
`IngressHandler.submit` as SMTP mail: DLP before the answer, the spool, the audit (``received``
says ``via: api`` and the token's name). The answer lists a queue id or an error per recipient.

Checked before anything is queued, each a 4xx with a clear message: the JSON and its types,
unknown fields, sizes, base64, CR or LF in a header value, the token's sender domains and pools.
An `idempotency_key` makes a retried request return the first answer and queue nothing new (for
`IDEMPOTENCY_TTL`); the same key with another body is a 409.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from gateway.apitokens import ApiToken
from gateway.durable import write_atomic
from gateway.message import ClientInfo, Envelope, Recipient, address_fit
from gateway.spool.generated import wire_bytes

IDEMPOTENCY_TTL = 86400.0
_FIELDS = frozenset(("from", "reply_to", "subject", "text", "html", "attachments", "headers", "tags",
                     "recipients", "pool", "protection", "idempotency_key", "content", "content_encoding",
                     "sender"))
_RECIPIENT_FIELDS = frozenset(("address", "substitutions"))
_ATTACHMENT_FIELDS = frozenset(("name", "type", "data"))
_PLACEHOLDER = re.compile(r"\{\{(\{)?\s*([A-Za-z_][A-Za-z0-9_.-]{0,63})\s*(\})?\}\}")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
# Headers the gateway writes itself (or that say who the message is for): not set by a request.
_RESERVED_HEADERS = frozenset(("from", "to", "cc", "bcc", "subject", "date", "message-id", "reply-to",
                               "mime-version", "content-type", "content-transfer-encoding", "received",
                               "return-path", "dkim-signature", "sender"))
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")


class RequestError(Exception):
    """The request as a whole is not acceptable: an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Outcome:
    """One recipient's answer: a queue id, or an error (with the SMTP-style code behind it)."""

    recipient: str
    queue_id: str | None = None
    error: str | None = None
    code: int = 250

    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"recipient": self.recipient}
        if self.queue_id is not None:
            found["queue_id"] = self.queue_id
        else:
            found["error"] = self.error
        return found


def _field(body: Mapping[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise RequestError(400, f"{name}: expected {kind.__name__}")
    return value


def _one_line(name: str, value: str, limit: int = 998) -> str:
    if "\r" in value or "\n" in value:
        raise RequestError(400, f"{name}: CR and LF are not allowed in a header value")
    if len(value) > limit:
        raise RequestError(400, f"{name}: longer than {limit} characters")
    return value


def parse_request(body: Any, max_recipients: int) -> dict[str, Any]:
    """The request, checked field by field (RequestError on the first problem)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body is a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field(s): {', '.join(unknown)}")
    recipients = _field(body, "recipients", list)
    if not recipients:
        raise RequestError(400, "recipients: at least one")
    if len(recipients) > max_recipients:
        raise RequestError(413, f"recipients: at most {max_recipients} per request")
    for index, recipient in enumerate(recipients):
        if not isinstance(recipient, dict) or not isinstance(recipient.get("address"), str):
            raise RequestError(400, f"recipients[{index}]: an object with an address")
        extra = sorted(set(recipient) - _RECIPIENT_FIELDS)
        if extra:
            raise RequestError(400, f"recipients[{index}]: unknown field(s): {', '.join(extra)}")
        substitutions = recipient.get("substitutions", {})
        if not isinstance(substitutions, dict) or not all(
                isinstance(k, str) and isinstance(v, str | int | float) for k, v in substitutions.items()):
            raise RequestError(400, f"recipients[{index}].substitutions: names to strings or numbers")
    for name in ("from", "reply_to", "subject", "text", "html", "pool", "protection", "idempotency_key",
                 "content", "content_encoding", "sender"):
        _field(body, name, str)
    if body.get("content") is None:
        if not body.get("from"):
            raise RequestError(400, "from: required (or give the whole message as content)")
        if not body.get("text") and not body.get("html"):
            raise RequestError(400, "text or html: at least one")
    elif any(body.get(name) is not None for name in ("subject", "text", "html", "attachments", "headers")):
        raise RequestError(400, "content is the whole message: subject, text, html, attachments and "
                                "headers go in it, not beside it")
    headers = _field(body, "headers", dict, {})
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
            raise RequestError(400, f"headers: {name!r} is not a header a request may set")
        if not isinstance(value, str):
            raise RequestError(400, f"headers.{name}: expected a string")
        _one_line(f"headers.{name}", value)
    for name in ("from", "reply_to", "subject"):
        if body.get(name):
            _one_line(name, body[name])
    tags = _field(body, "tags", list, [])
    if not all(isinstance(tag, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", tag) for tag in tags):
        raise RequestError(400, "tags: words of letters, digits, _ . : -")
    attachments = _field(body, "attachments", list, [])
    decoded = []
    for index, attachment in enumerate(attachments):
        if not isinstance(attachment, dict) or set(attachment) - _ATTACHMENT_FIELDS or \
                not isinstance(attachment.get("name"), str) or not isinstance(attachment.get("data"), str):
            raise RequestError(400, f"attachments[{index}]: an object with name, type and base64 data")
        kind = str(attachment.get("type") or "application/octet-stream").lower()
        if not _MIME_TYPE.fullmatch(kind):
            raise RequestError(400, f"attachments[{index}].type: not a MIME type")
        try:
            data = base64.b64decode(attachment["data"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"attachments[{index}].data: not valid base64") from None
        decoded.append((_one_line(f"attachments[{index}].name", attachment["name"], 255), kind, data))
    return {**body, "attachments": decoded, "headers": headers, "tags": tags}


def render(template: str, values: Mapping[str, Any], *, escape: bool) -> str:
    """``{{name}}`` -> the value (escaped when `escape`), ``{{{name}}}`` -> the value as it is.
    No expressions, no code: a name or nothing. An unknown name raises KeyError."""
    def substitute(match: re.Match[str]) -> str:
        raw = match.group(1) is not None and match.group(3) is not None
        value = str(values[match.group(2)])
        return value if raw or not escape else html.escape(value)
    return _PLACEHOLDER.sub(substitute, template)


def build_message(request: Mapping[str, Any], recipient: str, values: Mapping[str, Any],
                  hostname: str) -> bytes:
    """The recipient's own copy (RFC 5322, CRLF). KeyError: an unknown placeholder."""
    mail = EmailMessage()
    mail["From"] = request["from"]
    mail["To"] = recipient
    subject = render(request.get("subject") or "", values, escape=False)
    mail["Subject"] = _one_line("subject", subject)
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=hostname)
    if request.get("reply_to"):
        mail["Reply-To"] = request["reply_to"]
    for name, value in request["headers"].items():
        mail[name] = value
    if request["tags"]:
        mail["X-Mailward-Tags"] = " ".join(request["tags"])
    text = render(request["text"], values, escape=False) if request.get("text") else None
    markup = render(request["html"], values, escape=True) if request.get("html") else None
    if text is not None:
        mail.set_content(text)
        if markup is not None:
            mail.add_alternative(markup, subtype="html")
    else:
        mail.set_content(markup or "", subtype="html")
    for name, kind, data in request["attachments"]:
        maintype, subtype = kind.split("/", 1)
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return wire_bytes(mail)


def raw_message(request: Mapping[str, Any], limit: int) -> bytes:
    content = request["content"]
    if (request.get("content_encoding") or "text") == "base64":
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "content: not valid base64") from None
    else:
        raw = content.encode("utf-8")
    if len(raw) > limit:
        raise RequestError(413, f"content: larger than {limit} bytes")
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not re.match(rb"[!-9;-~]+:", raw):
        raise RequestError(400, "content: not an RFC 5322 message (it starts with no header field)")
    return raw


def envelope_sender(request: Mapping[str, Any], raw: bytes | None) -> str:
    """The envelope sender: `sender`, else the From address (of the fields or of the message)."""
    if request.get("sender"):
        return str(request["sender"])
    if raw is None:
        return parseaddr(request["from"])[1]
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    found = re.search(r"(?im)^from:\s*(.*(?:\r\n[ \t].*)*)", head)
    return parseaddr(found.group(1).replace("\r\n", " "))[1] if found else ""


def api_client(peer: str, token: ApiToken) -> ClientInfo:
    """How an API request appears in the Received header, the log and the audit record."""
    return ClientInfo(address=peer, helo="api", listener="api", auth_user=f"token:{token.name}",
                      relay_reason="api")


def envelope_for(sender: str, address: str) -> Envelope:
    return Envelope(sender=sender, recipients=(Recipient(address),), body="8BITMIME",
                    smtputf8=not (sender.isascii() and address.isascii()))


def valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain) and len(address) <= 320 and address_fit(address, True) \
        and " " not in address


class IdempotencyStore:
    """Answers by (token, key), kept `IDEMPOTENCY_TTL` in files (0600) so a restart keeps them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, token: str, key: str) -> Path:
        return self.directory / (hashlib.sha256(f"{token}\0{key}".encode()).hexdigest() + ".json")

    def get(self, token: str, key: str) -> dict[str, Any] | None:
        path = self._path(token, key)
        try:
            stored: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if time.time() - float(stored.get("at", 0)) > IDEMPOTENCY_TTL:
            path.unlink(missing_ok=True)
            return None
        return stored

    def put(self, token: str, key: str, digest: str, status: int, answer: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self._path(token, key), json.dumps(
            {"at": time.time(), "digest": digest, "status": status, "answer": answer}).encode())

    def sweep(self) -> None:
        for path in self.directory.glob("*.json") if self.directory.is_dir() else ():
            try:
                if time.time() - json.loads(path.read_text()).get("at", 0) > IDEMPOTENCY_TTL:
                    path.unlink(missing_ok=True)
            except (OSError, ValueError):
                continue


@dataclass
class SendLimits:
    max_recipients: int = 10_000
    max_content: int = 25 * 1024 * 1024
    requests_per_minute: int = 600


@dataclass
class RateLimiter:
    """Requests per token per minute (a sliding window)."""

    per_minute: int
    seen: dict[str, deque[float]] = field(default_factory=dict)

    def wait(self, token: str, now: float) -> float:
        """0 if the request may go on (and counts it), else the seconds until one may."""
        times = self.seen.setdefault(token, deque())
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.per_minute:
            return 60.0 - (now - times[0])
        times.append(now)
        return 0.0
