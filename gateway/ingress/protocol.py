"""The SMTP protocol of the ingress: aiosmtpd's `SMTP` with what an outbound gateway needs on top.

aiosmtpd speaks the protocol; this subclass adds, in one place each:
- connection limits checked before the greeting: in all, per client address, and a reserve of
  slots that only `relay.networks` may take; clients from elsewhere get `idle_before_mail` (not
  the full command timeout) until they authenticate or start a transaction, so idle connections
  cannot hold the slots for long;
- enhanced status codes (RFC 2034/3463) on every reply, and a per-session error budget;
- MAIL/RCPT parsing with the null sender and RFC 3461 DSN parameters (aiosmtpd refuses both);
- AUTH PLAIN/LOGIN only after STARTTLS, verified off the event loop (argon2 is slow on purpose);
- graceful drain: idle sessions are closed with 421, open transactions finish first.
Policy (who may relay, what is accepted) lives in `ingress.handler`; this module only parses.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import ssl
from base64 import b64decode
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from gateway import eventlog
from gateway.config import ListenerConfig
from gateway.ingress import replies
from gateway.ingress.dataread import DataState, read_data
from gateway.message import Recipient, address_fit, decode_xtext
from gateway.spool.spill import Spill

if TYPE_CHECKING:
    from gateway.ingress.handler import IngressHandler

log = logging.getLogger("mailward.smtpd")

_NOTIFY_VALUES = {"SUCCESS", "FAILURE", "DELAY"}
PROXY_TIMEOUT = 10.0  # seconds for a load balancer's PROXY header
MAX_XTEXT = 500  # RFC 3461 ENVID is at most 100 characters; ORCPT an address; generous bound


class GatewaySession(Session):
    """aiosmtpd's session plus what relay decisions and the Received header need."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.auth_user: str | None = None
        self.cert_name: str | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None


class Transaction(Envelope):
    """One mail transaction: aiosmtpd's envelope plus the parsed ESMTP parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_from: str | None = None  # "" is the null sender, None is "no MAIL yet"
        self.body_type = "7BIT"
        self.ret: str | None = None
        self.envid: str | None = None
        self.requiretls = False  # RFC 8689
        self.recipients: list[Recipient] = []
        self.relay_reason = ""  # decided at the first accepted RCPT, recorded with the message
        self.feedback: list[tuple[str, str]] = []  # (kind, address) of the gateway's own addresses
        self.sender_denied = False  # MAIL FROM outside relay.sender_domains: only feedback RCPTs
        self.spill: Spill | None = None  # the message, when it was too large to keep in memory


@dataclass
class ConnectionTracker:
    """Open connections across all listeners, for the limits and for draining. Connections from
    outside relay.networks that have not authenticated (or shown an accepted certificate) are
    "unproven": they may use all but `reserved` slots and `max_per_ip` each."""

    max_total: int
    max_per_ip: int
    reserved: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)
    open: set[GatewaySMTP] = field(default_factory=set)
    unproven: set[GatewaySMTP] = field(default_factory=set)
    _empty: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_empty(self) -> None:
        """Return once no connection is open (used by the SIGTERM drain)."""
        while self.open:
            self._empty.clear()
            await self._empty.wait()

    def admit(self, protocol: GatewaySMTP, ip: str, *, trusted: bool) -> str | None:
        """Register a new connection, or return why it is refused. `trusted`: from relay.networks."""
        if len(self.open) >= self.max_total:
            return replies.TOO_MANY_CONNECTIONS
        if not trusted:
            if len(self.unproven) >= self.max_total - min(self.reserved, self.max_total // 2):
                return replies.TOO_MANY_CONNECTIONS
            if self.per_ip[ip] >= self.max_per_ip:
                return replies.TOO_MANY_FROM_IP
            self.unproven.add(protocol)
        self.open.add(protocol)
        self.per_ip[ip] += 1
        return None

    def proven(self, protocol: GatewaySMTP) -> None:
        """The client authenticated or showed an accepted certificate: it no longer counts
        against the slots that unproven clients share."""
        self.unproven.discard(protocol)

    def holders(self, top: int = 5) -> str:
        """Who holds the most connections, for the log when a limit refuses one."""
        return ",".join(f"{ip}={count}" for ip, count in self.per_ip.most_common(top))

    def release(self, protocol: GatewaySMTP, ip: str) -> None:
        self.unproven.discard(protocol)
        if protocol in self.open:
            self.open.discard(protocol)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
            if not self.open:
                self._empty.set()


# The usual <dot-atom@domain> form, parsed without aiosmtpd's general (and per call much
# slower) RFC 5322 parser; quoted local parts, UTF-8 and the like still go through it.
_SIMPLE_PATH = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>(.*)", re.DOTALL)


DATA_READ_LIMIT = 64 * 1024


def is_mailbox(address: str) -> bool:
    """local@domain with both parts present: we relay to the internet, so no unqualified names."""
    local, at, domain = address.rpartition("@")
    return (bool(at and local and domain) and len(address) <= 320 and "." in domain.strip(".[]")) \
        or bool(at and local and domain.startswith("[") and domain.endswith("]"))


def split_params(text: str) -> dict[str, str | bool] | None:
    """ESMTP parameters "KEY=value KEY2" -> {KEY: value, KEY2: True}; None if malformed.
    Keys are upper-cased; values keep their case (ENVID and ORCPT are case-sensitive)."""
    params: dict[str, str | bool] = {}
    for token in text.split():
        key, eq, value = token.partition("=")
        if not key.isalnum() or (eq and not value) or key.upper() in params:
            return None
        params[key.upper()] = value if eq else True
    return params


class GatewaySMTP(SMTP):
    """One SMTP connection to a listener."""

    event_handler: IngressHandler
    session: GatewaySession | None
    envelope: Transaction | None

    def __init__(self, handler: IngressHandler, listener: ListenerConfig,
                 tls_context: ssl.SSLContext | None, tracker: ConnectionTracker, *,
                 hostname: str, data_size_limit: int, command_timeout: float,
                 data_timeout: float, max_errors: int, idle_before_mail: float | None = None) -> None:
        super().__init__(
            handler, hostname=hostname, ident="Mailward ESMTP", data_size_limit=data_size_limit,
            enable_SMTPUTF8=True, decode_data=False, tls_context=tls_context,
            require_starttls=listener.starttls == "required" and tls_context is not None,
            auth_required=listener.auth == "required", auth_require_tls=True,
            timeout=command_timeout,
            # Bound the commands that carry no mail; MAIL/RCPT/DATA/RSET stay unlimited so one
            # connection can carry many messages, as Exchange Online and Postfix do.
            command_call_limit={"NOOP": 100, "VRFY": 10, "EXPN": 10, "HELP": 10, "EHLO": 10,
                                "HELO": 10, "STARTTLS": 2, "AUTH": 5, "*": 10**9},
            proxy_protocol_timeout=PROXY_TIMEOUT if listener.proxy_protocol else None,
            loop=asyncio.get_running_loop())
        self.listener = listener
        self._tracker = tracker
        self._data_timeout = data_timeout
        self._max_errors = max_errors
        self._errors = 0
        self._in_ehlo = False
        self._in_data = False
        self._refused = False
        self._draining = False
        self._client_ip = ""
        # Until the client is trusted, authenticates or sends MAIL, it may idle only this long.
        self._idle_before_mail = idle_before_mail
        self._command_timeout = command_timeout
        self._peer_trusted = False  # in relay.networks, decided when the client is known

    # -- connection lifecycle -------------------------------------------------------------

    def _create_session(self) -> GatewaySession:
        return GatewaySession(self.loop)

    def _create_envelope(self) -> Transaction:
        return Transaction()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection, not the STARTTLS re-wrap
            peer = transport.get_extra_info("peername")
            self._client_ip = peer[0] if peer else ""
            self._peer_trusted = self._trusted(self._client_ip)
            refusal = self._tracker.admit(self, self._client_ip, trusted=self._peer_trusted)
            if refusal is not None:
                self._refused = True
                eventlog.event(log, "connection_refused", logging.WARNING,
                               client=self._client_ip, listener=self.listener.label,
                               reason="too_many_connections", holders=self._tracker.holders())
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write((refusal.format(hostname=self.hostname) + "\r\n").encode())
                transport.close()
                return
        super().connection_made(transport)

    def _trusted(self, client_ip: str) -> bool:
        return self.event_handler.settings.relay_for(self.listener).in_networks(client_ip)

    def prove(self) -> None:
        """Authenticated, or an accepted client certificate: the full command timeout, and no
        longer one of the unproven connections."""
        self._idle_before_mail = None
        self._tracker.proven(self)

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None and self._idle_before_mail is not None and not self._peer_trusted:
            duration = min(self._idle_before_mail, self._command_timeout)
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        """Say why before closing, as Postfix does, and log who it was."""
        eventlog.event(log, "timeout", client=self._client_ip, listener=self.listener.label,
                       before_mail="yes" if self._idle_before_mail is not None and not self._peer_trusted
                       else None)
        if self.transport is not None and not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            with contextlib.suppress(RuntimeError, OSError):
                self.transport.write((replies.TIMEOUT.format(hostname=self.hostname) + "\r\n").encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._tracker.release(self, self._client_ip)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def begin_drain(self) -> None:
        """SIGTERM: close now if idle, else after the transaction in progress is answered."""
        self._draining = True
        if not self._in_transaction() and self.transport is not None:
            self.loop.create_task(self._close_for_shutdown())

    def _in_transaction(self) -> bool:
        return self._in_data or (self.envelope is not None and self.envelope.mail_from is not None)

    async def _close_for_shutdown(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone already
            await super().push(replies.SHUTTING_DOWN)
        if self.transport is not None:
            self.transport.close()

    # -- replies ----------------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            assert self.session is not None
            if self.session.extended_smtp and not self._in_ehlo:
                status = replies.with_enhanced_code(status)
            if status[:1] in "45" and not status.startswith(("452", "421")):
                self._errors += 1
        await super().push(status)
        if self._errors >= self._max_errors and self.transport is not None:
            eventlog.event(log, "too_many_errors", logging.WARNING, client=self._client_ip)
            await super().push(replies.TOO_MANY_ERRORS.format(hostname=self.hostname))
            self.transport.close()
        elif self._draining and not self._in_transaction() and not self._in_ehlo:
            await self._close_for_shutdown()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False
        if self._draining and not self._in_transaction():
            await self._close_for_shutdown()

    # -- mail transaction -------------------------------------------------------------------

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.fullmatch(arg)
        if match is None or (self.local_part_limit
                             and len(match.group(1).rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        return match.group(1), match.group(2).lstrip()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.session is not None and self.envelope is not None
        rest = self._strip_command_keyword("FROM:", arg) if arg else None
        if rest is None:
            await self.push(replies.MAIL_SYNTAX)
            return
        if self.envelope.mail_from is not None:
            await self.push(replies.MAIL_NESTED)
            return
        if rest.startswith("<>"):
            address: str | None = ""
            params_text: str | None = rest[2:]
        else:
            address, params_text = self._getaddr(rest)
        if address is None or (address != "" and not is_mailbox(address)) or (
                address == "" and not rest.startswith("<>")):
            await self.push(replies.SENDER_MALFORMED)
            return
        params = split_params(params_text or "") if self.session.extended_smtp or not params_text \
            else None
        if params is None:
            await self.push(replies.MAIL_PARAMS_SYNTAX)
            return
        error = self._apply_mail_params(params)
        if error:
            await self.push(error)
            return
        # The raw argument, not the parsed address: the RFC 5322 parser folds whitespace and
        # reads "(" as a comment, so what it returns may look clean when the line is not.
        if not address_fit(rest, bool(self.envelope.smtp_utf8)):
            await self.push(replies.SENDER_BAD_CHARACTERS)
            return
        reply = await self.event_handler.mail_from(self, self.session, self.envelope, address)
        if reply.startswith("250"):
            self._idle_before_mail = None  # a transaction started: the usual command timeout
        await self.push(reply)

    def _apply_mail_params(self, params: dict[str, str | bool]) -> str | None:
        assert self.envelope is not None
        size = params.pop("SIZE", None)
        if size is not None:
            if not isinstance(size, str) or not size.isdigit():
                return replies.BAD_SIZE
            if self.data_size_limit and int(size) > self.data_size_limit:
                return replies.SIZE_EXCEEDED
        body = params.pop("BODY", "7BIT")
        if not isinstance(body, str) or body.upper() not in ("7BIT", "8BITMIME"):
            return replies.BAD_BODY
        smtputf8 = params.pop("SMTPUTF8", False)
        if smtputf8 is not False and smtputf8 is not True:
            return replies.BAD_SMTPUTF8
        ret = params.pop("RET", None)
        if ret is not None and (not isinstance(ret, str) or ret.upper() not in ("FULL", "HDRS")):
            return replies.BAD_DSN_PARAMETER.format(name="RET")
        envid = params.pop("ENVID", None)
        if envid is not None and (not isinstance(envid, str) or len(envid) > MAX_XTEXT
                                  or not address_fit(decode_xtext(envid), False)):
            return replies.BAD_DSN_PARAMETER.format(name="ENVID")
        requiretls = params.pop("REQUIRETLS", False)
        if requiretls is not False and requiretls is not True:
            return replies.BAD_REQUIRETLS
        if requiretls and self._tls_protocol is None:
            return replies.REQUIRETLS_NEEDS_TLS
        if params:
            return replies.MAIL_PARAMS_UNKNOWN + ",".join(sorted(params))
        self.envelope.body_type = body.upper()
        self.envelope.smtp_utf8 = smtputf8
        self.envelope.ret = ret.upper() if isinstance(ret, str) else None
        self.envelope.envid = decode_xtext(envid) if isinstance(envid, str) else None
        self.envelope.requiretls = requiretls
        return None

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.session is not None and self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push(replies.NEED_MAIL)
            return
        rest = self._strip_command_keyword("TO:", arg) if arg else None
        address, params_text = self._getaddr(rest) if rest else (None, None)
        if rest is not None and not address_fit(rest, bool(self.envelope.smtp_utf8)):  # raw, as at MAIL
            await self.push(replies.RECIPIENT_BAD_CHARACTERS)
            return
        if not address or not is_mailbox(address):
            await self.push(replies.RCPT_SYNTAX if rest is None or address == ""
                            else replies.RECIPIENT_MALFORMED)
            return
        params = split_params(params_text or "") if self.session.extended_smtp or not params_text \
            else None
        if params is None:
            await self.push(replies.RCPT_PARAMS_SYNTAX)
            return
        recipient, error = self._recipient_from_params(address, params)
        if error or recipient is None:
            await self.push(error or replies.BAD_PARAMETERS)
            return
        await self.push(await self.event_handler.rcpt_to(self, self.session, self.envelope,
                                                         recipient))

    @staticmethod
    def _recipient_from_params(address: str, params: dict[str, str | bool]) -> tuple[
            Recipient | None, str | None]:
        notify_raw = params.pop("NOTIFY", None)
        notify: tuple[str, ...] = ()
        if notify_raw is not None:
            if not isinstance(notify_raw, str):
                return None, replies.BAD_DSN_PARAMETER.format(name="NOTIFY")
            notify = tuple(v.upper() for v in notify_raw.split(","))
            if not (notify == ("NEVER",) or set(notify) <= _NOTIFY_VALUES):
                return None, replies.BAD_DSN_PARAMETER.format(name="NOTIFY")
        orcpt = params.pop("ORCPT", None)
        if orcpt is not None and (not isinstance(orcpt, str) or ";" not in orcpt
                                  or len(orcpt) > MAX_XTEXT or not address_fit(decode_xtext(orcpt), True)):
            return None, replies.BAD_DSN_PARAMETER.format(name="ORCPT")
        if params:
            return None, replies.RCPT_PARAMS_UNKNOWN + ",".join(sorted(params))
        return Recipient(address=address, notify=notify,
                         orcpt=decode_xtext(orcpt) if isinstance(orcpt, str) else None), None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        # The command timeout covers one command; the whole DATA transfer gets its own.
        self._reset_timeout(self._data_timeout)
        self._in_data = True
        # A larger reader limit while the message flows: pieces of up to 64 KB instead of the
        # transport paused and resumed every few kilobytes (see dataread).
        self._reader._limit = DATA_READ_LIMIT  # type: ignore[attr-defined]
        try:
            await self.push(replies.START_DATA)
            spool = self.event_handler.spool
            try:
                received = await read_data(
                    self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit,
                    new_spill=lambda: Spill(spool.directory / "tmp", spool.keyring))
            except asyncio.CancelledError:
                log.info("event=connection_lost_in_data client=%s", self._client_ip)
                self._writer.close()
                raise
            self._reader._limit = self.line_length_limit  # type: ignore[attr-defined]
            if received.state is DataState.TOO_LONG:
                reply = replies.LINE_TOO_LONG
            elif received.state is DataState.TOO_MUCH:
                reply = replies.TOO_MUCH_DATA
            elif received.state is DataState.WRITE_FAILED:
                log.error("event=queue_write_failed client=%s error=spill_file", self._client_ip)
                reply = replies.QUEUE_WRITE_ERROR
            else:
                self.envelope.original_content = self.envelope.content = received.content
                self.envelope.spill = received.spill
                try:
                    reply = await self._call_handler_hook("DATA")
                finally:
                    if received.spill is not None:
                        received.spill.close()
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(reply)
        finally:
            self._in_data = False
            self._reader._limit = self.line_length_limit  # type: ignore[attr-defined]
        if self._draining and not self._in_transaction():
            await self._close_for_shutdown()  # the transaction is answered: now we may go

    # -- AUTH -------------------------------------------------------------------------------

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None and self.envelope is not None
        if self.listener.auth == "off" or not self.session.extended_smtp:
            await self.push(replies.AUTH_NOT_ENABLED)
        elif self._tls_protocol is None:
            await self.push(replies.AUTH_NEEDS_TLS)
        elif self.session.authenticated:
            await self.push(replies.AUTH_ALREADY)
        elif self.envelope.mail_from is not None:
            await self.push(replies.AUTH_IN_TRANSACTION)
        elif not arg or len(arg.split()) > 2:
            await self.push(replies.AUTH_SYNTAX_ARGS)
        else:
            mechanism, _, initial = arg.partition(" ")
            credentials = await self._read_credentials(mechanism.upper(), initial.strip())
            if credentials is not None:
                await self._check_credentials(*credentials)

    async def _read_credentials(self, mechanism: str, initial: str) -> tuple[str, str] | None:
        """Run the PLAIN or LOGIN exchange; None when it ended with an error already replied."""
        if mechanism == "PLAIN":
            blob = await self._auth_blob(initial, "")
            if blob is None:
                return None
            parts = blob.split(b"\0")
            if len(parts) != 3:
                await self.push(replies.AUTH_SYNTAX)
                return None
            return self._decode_pair(parts[1], parts[2])
        if mechanism == "LOGIN":
            user = await self._auth_blob(initial, "Username:")
            password = await self._auth_blob("", "Password:") if user is not None else None
            if user is None or password is None:
                return None
            return self._decode_pair(user, password)
        await self.push(replies.AUTH_MECHANISM)
        return None

    async def _auth_blob(self, initial: str, challenge: str) -> bytes | None:
        if initial == "=":
            return b""
        if initial:
            try:
                return b64decode(initial, validate=True)
            except (binascii.Error, ValueError):
                await self.push(replies.AUTH_SYNTAX)
                return None
        response = await self.challenge_auth(challenge)  # replies itself on "*" or bad base64
        return None if response is MISSING else response

    @staticmethod
    def _decode_pair(user: bytes, password: bytes) -> tuple[str, str]:
        return user.decode("utf-8", "replace"), password.decode("utf-8", "replace")

    async def _check_credentials(self, user: str, password: str) -> None:
        assert self.session is not None
        handler = self.event_handler
        limits = handler.settings.limits
        lockout, counted = handler.auth_throttle.begin(self._client_ip, user, limits)
        if lockout is not None:
            # Not even checked: the right password must not tell a guesser it was right.
            await handler.auth_failed(self, user, f"locked ({lockout})")
            await self.push(replies.AUTH_LOCKED)
            return
        ok = await self.loop.run_in_executor(None, handler.settings.users.verify, user, password)
        if ok:
            handler.auth_throttle.succeeded(self._client_ip, user, counted)
            self.session.authenticated = True
            self.session.auth_user = user
            self.prove()
            eventlog.event(log, "auth_ok", client=self._client_ip, user=user)
            await self.push(replies.AUTH_OK)
            return
        failures, delay = handler.auth_throttle.failures(self._client_ip, limits)
        await handler.auth_failed(self, user, "wrong", failures=failures)
        await asyncio.sleep(delay)  # growing with the address's failures; other sessions go on
        await self.push(replies.AUTH_FAILED)

    @property
    def client_ip(self) -> str:
        return self._client_ip

    def proxied_client(self, address: str) -> bool:
        """The PROXY header named the real client: count it (limits) under its own address.
        False when that address has too many connections already (the connection is closed)."""
        self._tracker.release(self, self._client_ip)
        self._client_ip = address
        self._peer_trusted = self._trusted(address)
        if self._tracker.admit(self, address, trusted=self._peer_trusted) is not None:
            self._refused = True  # nothing to release on close: it was never admitted
            eventlog.event(log, "connection_refused", logging.WARNING, client=address,
                           listener=self.listener.label, reason="too_many_connections",
                           holders=self._tracker.holders())
            return False
        return True
