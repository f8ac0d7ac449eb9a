"""The outbound SMTP client: one connection to a recipient domain's MX and the transactions on it.

`Connector.open` tries the destinations in MX order and each host's addresses in turn, moving on
after a connection failure or a 4xx/5xx greeting; it offers STARTTLS when the host advertises it and
records, per connection, the TLS version, cipher and whether the certificate verified (by name or
by the host's DANE TLSA records). What TLS a destination *requires* comes from a `TlsPolicy`
(`tlspolicy.TlsPolicyMap`: the admin's map, MTA-STS) and from the message (protected recipients,
REQUIRETLS): a connection that cannot meet the requirement is never used to send.

`SmtpConnection.deliver` runs one message through MAIL/RCPT/DATA and returns a reply per
recipient. A 452 "too many recipients" after some were accepted sends the rest in a further
transaction on the same connection (RFC 5321 §4.5.3.1.10).

aiosmtplib and ssl exceptions end here: they become a `Reply` per recipient, with an enhanced
status code (RFC 3463), or a `ConnectionFailed` carrying one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from gateway.message import Envelope, Recipient, Reply, TlsSession, address_fit, encode_xtext
from gateway.resolver import Destination, ResolutionError, TlsaRecord
from gateway.transport import dane
from gateway.transport.peer import peer_chain, tls_contexts
from gateway.transport.tlspolicy import TlsRequirement

DATA_PIECE = 256 * 1024  # a message above this is sent in pieces about this size
RCPTS_PER_TRANSACTION = 100  # RFC 5321 §4.5.3.1.8: servers must accept at least 100
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")  # as aiosmtplib: lone CR or LF become CRLF
_LINE_START_DOT = re.compile(rb"(?m)^\.")
# Whether a message needs those: patterns that start with a literal byte, which the regular
# expression engine finds with memchr (see crypto/dkim.py).
_LONE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_DOT_AFTER_CRLF = re.compile(rb"\n\.")


def data_pieces(content: bytes) -> Iterator[bytes]:
    """`content` as it goes after DATA, in pieces that each end at a line end: line ends made
    CRLF, a dot at a line start doubled, the final dot line last (RFC 5321 4.5.2). The same bytes
    as aiosmtplib sends, without its two substitutions over every message (most need neither)."""
    if not content:
        yield b"\r\n"
    start = 0
    while start < len(content):
        end = content.find(b"\n", start + DATA_PIECE)
        end = len(content) if end < 0 else end + 1
        piece = content[start:end] if start or end < len(content) else content
        if _LONE_CR.search(piece) or _BARE_LF.search(piece):
            piece = _LINE_END.sub(b"\r\n", piece)
        if piece.startswith(b".") or _DOT_AFTER_CRLF.search(piece):  # a piece starts a line
            piece = _LINE_START_DOT.sub(b"..", piece)
        start = end
        if start >= len(content) and not piece.endswith(b"\r\n"):
            piece += b"\r\n"
        yield piece
    yield b".\r\n"


# Addresses no SMTP server can be sent (queued before ingress refused them): final, not retried.
UNSENDABLE_SENDER = Reply(553, "5.1.7", "sender address has control characters, invalid UTF-8 or "
                                        "8-bit characters without SMTPUTF8")
UNSENDABLE_RECIPIENT = Reply(553, "5.1.3", "recipient address has control characters, invalid UTF-8 "
                                           "or 8-bit characters without SMTPUTF8")


# (MX host, port) -> its authenticated TLSA records, () when DANE does not apply.
TlsaLookup = Callable[[str, int], Awaitable[tuple[TlsaRecord, ...]]]


class TlsPolicy(Protocol):
    async def requirement(self, domain: str, destinations: Sequence[Destination]) -> TlsRequirement: ...


class ConnectionFailed(Exception):
    """No destination host could be used; `reply` is the last reason, for every recipient.
    `tls_failure`: a host was reached but could not give the TLS the requirement asked for (no
    STARTTLS, a certificate that does not verify, a failed handshake), so another protection
    method may help where waiting would not."""

    def __init__(self, reply: Reply, relay: str = "none", *, tls_failure: bool = False,
                 tls_result: str = "validation-failure") -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.relay = relay
        self.tls_failure = tls_failure
        self.tls_result = tls_result  # RFC 8460 result-type, for TLS reports


@dataclass(frozen=True)
class Timeouts:
    connect: float
    command: float
    data: float


class SmtpConnection:
    """An open, greeted (and maybe TLS-protected) SMTP connection to one MX host."""

    def __init__(self, client: aiosmtplib.SMTP, destination: Destination, address: str,
                 tls: TlsSession, timeouts: Timeouts) -> None:
        self._client = client
        self.destination = destination
        self.address = address
        self.tls = tls
        self._timeouts = timeouts
        self.messages = 0  # transactions completed on this connection
        self.last_used = time.monotonic()
        self.broken = False  # a network error or timeout: do not reuse
        self.reached_data = False  # the last deliver() sent DATA (a retry could duplicate)
        self.on_close: list[Callable[[], None]] = []  # e.g. shaping's count of open connections

    @property
    def passes_dsn(self) -> bool:
        """The host takes RFC 3461 DSN parameters, so success reports become its job."""
        return "dsn" in self._client.esmtp_extensions

    @property
    def egress_ip(self) -> str | None:
        """Our end of the connection: the source address the receiver sees."""
        try:
            sockname = self._client.get_transport_info("sockname")
        except (AttributeError, aiosmtplib.SMTPException):
            return None
        return str(sockname[0]) if sockname else None

    @property
    def relay(self) -> str:
        """``host[ip]:port`` as Postfix logs it."""
        return f"{self.destination.host}[{self.address}]:{self.destination.port}"

    async def deliver(self, envelope: Envelope, recipients: Sequence[tuple[int, Recipient]],
                      content: bytes) -> dict[int, Reply]:
        """One message to `recipients` (index, recipient); a reply for each index."""
        replies: dict[int, Reply] = {}
        refusal = self._refuse_unsupported(envelope, content)
        if refusal is not None:
            return {index: refusal for index, _ in recipients}
        if not address_fit(envelope.sender, envelope.smtputf8):
            return {index: UNSENDABLE_SENDER for index, _ in recipients}
        replies = {index: UNSENDABLE_RECIPIENT for index, recipient in recipients
                   if not address_fit(recipient.address, envelope.smtputf8)}
        self.reached_data = False
        if not content.endswith(b"\n"):
            content += b"\r\n"  # the end-of-data dot must start a line of its own
        pending = [(index, recipient) for index, recipient in recipients if index not in replies]
        try:
            while pending:
                # Each round accepts at least one recipient (see _transaction), so this ends.
                batch, pending = pending[:RCPTS_PER_TRANSACTION], pending[RCPTS_PER_TRANSACTION:]
                done, put_off = await self._transaction(envelope, batch, content)
                replies.update(done)
                pending = put_off + pending
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.broken = True
            lost = _network_reply(exc, f"while talking to {self.relay}")
            for index, _ in recipients:
                replies.setdefault(index, lost)
        except BaseException:
            self.broken = True  # mid-transaction: never reused for another message
            raise
        self.last_used = time.monotonic()
        return replies

    def _refuse_unsupported(self, envelope: Envelope, content: bytes) -> Reply | None:
        extensions = self._client.esmtp_extensions
        if envelope.smtputf8 and "smtputf8" not in extensions:
            return Reply(550, "5.6.7", f"{self.relay} does not support SMTPUTF8, which the message needs")
        if envelope.requiretls and "requiretls" not in extensions:
            # RFC 8689 §4.2.1: a REQUIRETLS message is never relayed to a host that cannot keep
            # the promise; the sender gets a bounce.
            return Reply(550, "5.7.30", f"{self.relay} does not support REQUIRETLS, which the sender "
                                        "requires")
        limit = extensions.get("size", "")
        if limit.isdigit() and 0 < int(limit) < len(content):
            return Reply(552, "5.3.4", f"message size exceeds the limit of {self.relay} ({limit} bytes)")
        return None

    async def _transaction(self, envelope: Envelope, batch: list[tuple[int, Recipient]],
                           content: bytes) -> tuple[dict[int, Reply], list[tuple[int, Recipient]]]:
        """MAIL, RCPT for `batch`, DATA. Returns the replies and the recipients a 452 put off."""
        extensions = self._client.esmtp_extensions
        encoding = "utf-8" if envelope.smtputf8 else "ascii"
        mail = await self._client.execute_command(
            b"MAIL", b"FROM:<" + envelope.sender.encode(encoding) + b">",
            *_mail_options(envelope, len(content), extensions, content.isascii()))
        if mail.code != 250:
            await self.reset()
            reply = Reply.from_smtp(mail.code, mail.message, "5.0" if mail.code >= 500 else "3.0")
            return {index: reply for index, _ in batch}, []
        replies: dict[int, Reply] = {}
        accepted: list[int] = []
        put_off: list[tuple[int, Recipient]] = []
        for position, (index, recipient) in enumerate(batch):
            answer = await self._client.execute_command(
                b"RCPT", b"TO:<" + recipient.address.encode(encoding) + b">",
                *_rcpt_options(recipient, extensions))
            if answer.code in (250, 251):
                accepted.append(index)
            elif answer.code == 452 and accepted:
                put_off = batch[position:]  # too many recipients: the rest go in a new transaction
                break
            else:
                replies[index] = Reply.from_smtp(answer.code, answer.message, "1.0")
        if not accepted:
            await self.reset()
            return replies, put_off
        self.reached_data = True
        try:
            final = await self._data(content)
            reply = Reply.from_smtp(final.code, final.message)
        except aiosmtplib.SMTPDataError as refused:
            reply = Reply.from_smtp(refused.code, refused.message)
            await self.reset()  # a refusal of DATA itself leaves the transaction open
        self.messages += 1
        for index in accepted:
            replies[index] = reply
        return replies, put_off

    async def _data(self, content: bytes) -> aiosmtplib.SMTPResponse:
        """DATA and the message, prepared by `data_pieces`: the bytes aiosmtplib's own DATA sends,
        without its substitutions over every message. Mail goes in one write; a message above
        `DATA_PIECE` (aiosmtplib would make three copies of a 25 MB attachment, and the transport
        buffer what the socket does not take) in pieces, each sent before the next is made."""
        timeout = self._timeouts.data
        start = await self._client.execute_command(b"DATA", timeout=timeout)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = self._client.protocol
        try:
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            drain = getattr(protocol, "_drain_helper", None)  # the transport's flow control
            # As aiosmtplib's own DATA does: the reply is expected from now on. Without this, a
            # reply that arrives before `read_response` is dropped as unsolicited, and the
            # message already taken by the peer would wait for the timeout and be sent again.
            protocol._response_pending = True
            if len(content) <= DATA_PIECE:  # one write, one segment, as most mail goes
                protocol.write(b"".join(data_pieces(content)))
            else:
                for piece in data_pieces(content):
                    protocol.write(piece)
                    if drain is not None:
                        await asyncio.wait_for(drain(), timeout)
            final = await protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, TimeoutError,
                ConnectionError):
            self._client.close()
            raise
        if final.code != 250:
            raise aiosmtplib.SMTPDataError(final.code, final.message)
        return final

    async def reset(self) -> None:
        """RSET: abandon the transaction so the connection can carry the next message."""
        answer = await self._client.execute_command(b"RSET")
        if answer.code != 250:
            self.broken = True

    async def close(self) -> None:
        """QUIT politely, briefly; a peer that does not answer is simply disconnected."""
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            if not self.broken and self._client.is_connected:
                await self._client.quit(timeout=2.0)
        self._client.close()
        for callback in self.on_close:
            callback()
        self.on_close.clear()


class Connector:
    """Opens connections to a destination, honouring its TLS requirement."""

    def __init__(self, ehlo_name: str, timeouts: Timeouts, *, ca_file: str | None = None,
                 tlsa: TlsaLookup | None = None) -> None:
        self._ehlo_name = ehlo_name
        self._timeouts = timeouts
        self._verifying, self._any_certificate = tls_contexts(ca_file)
        self._tlsa = tlsa  # DANE: authenticated TLSA records of an MX host, or None to skip DANE

    async def open(self, destinations: Sequence[Destination], requirement: TlsRequirement,
                   source: tuple[str | None, str] = (None, "")) -> SmtpConnection:
        """A connection to the first host that takes one, from `source` (our address, or None
        for the system's choice, and the EHLO name, or "" for ours); raises ConnectionFailed
        with the last reason when none does."""
        last = ConnectionFailed(Reply(451, "4.4.1", "no destination host to try"))
        tls_failure = None
        allowed = [d for d in destinations if requirement.allows(d.host)]
        if not allowed:
            policy = requirement.source or "TLS"
            raise ConnectionFailed(Reply(450, "4.7.5", f"no MX host matches the {policy} policy"),
                                   tls_failure=True, tls_result="validation-failure")
        for destination in allowed:
            for address in destination.addresses:
                try:
                    return await self._open_one(destination, address, requirement, source)
                except ConnectionFailed as failure:
                    last = failure
                    tls_failure = tls_failure or (failure if failure.tls_failure else None)
        raise tls_failure or last  # a TLS failure says more than a host that was down

    async def _open_one(self, destination: Destination, address: str, requirement: TlsRequirement,
                        source: tuple[str | None, str] = (None, "")) -> SmtpConnection:
        relay = f"{destination.host}[{address}]:{destination.port}"
        client = await self._greet(destination, address, relay, source)
        if requirement.level == "none":
            return SmtpConnection(client, destination, address, TlsSession(), self._timeouts)
        try:
            records = await self._tlsa(destination.host, destination.port) if self._tlsa is not None else ()
        except ResolutionError as exc:
            client.close()
            raise ConnectionFailed(Reply(451, "4.7.5", f"TLSA lookup for {destination.host} failed: "
                                                       f"{exc.reason}"), relay, tls_failure=True,
                                   tls_result="tlsa-invalid") from None
        if records:  # DANE applies, and takes precedence over every other TLS policy
            return await self._open_dane(client, destination, address, relay, records, requirement)
        if "starttls" not in client.esmtp_extensions:
            if requirement.level not in ("may", "none"):
                client.close()
                raise ConnectionFailed(Reply(450, "4.7.4", f"{relay} does not offer STARTTLS"), relay,
                                       tls_failure=True, tls_result="starttls-not-supported")
            return SmtpConnection(client, destination, address, TlsSession(), self._timeouts)
        try:
            tls = await self._starttls(client, destination, requirement, verify=True)
            return SmtpConnection(client, destination, address, tls, self._timeouts)
        except ssl.SSLCertVerificationError as exc:
            client.close()
            if requirement.level == "verify":
                raise ConnectionFailed(Reply(450, "4.7.5", f"certificate of {relay} not verified: "
                                             f"{exc.verify_message}"), relay, tls_failure=True,
                                       tls_result=_certificate_result(exc)) from None
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return await self._without_tls(destination, address, requirement, relay, exc, source)
        # The certificate did not verify; for "may" and "encrypt" an unverified TLS session is
        # still better than none, so connect again (from the same egress IP, with its EHLO name)
        # and accept any certificate.
        client = await self._greet(destination, address, relay, source)
        try:
            tls = await self._starttls(client, destination, requirement, verify=False)
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return await self._without_tls(destination, address, requirement, relay, exc, source)
        return SmtpConnection(client, destination, address, tls, self._timeouts)

    async def _open_dane(self, client: aiosmtplib.SMTP, destination: Destination, address: str,
                         relay: str, records: tuple[TlsaRecord, ...],
                         requirement: TlsRequirement) -> SmtpConnection:
        """RFC 7672: TLS is mandatory; a usable TLSA record must match the server's certificate."""
        if "starttls" not in client.esmtp_extensions:
            client.close()
            raise ConnectionFailed(Reply(450, "4.7.4", f"{relay} does not offer STARTTLS, which its TLSA "
                                                       "records require"), relay, tls_failure=True,
                                   tls_result="starttls-not-supported")
        try:
            tls = await self._starttls(client, destination, requirement, verify=False)
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise ConnectionFailed(_network_reply(exc, f"in TLS handshake with {relay}"), relay,
                                   tls_failure=True) from None
        if any(record.usable for record in records):
            chain = peer_chain(client.get_transport_info("ssl_object"))
            if not dane.authenticates(records, chain, destination.host):
                client.close()
                raise ConnectionFailed(Reply(450, "4.7.5", f"certificate of {relay} does not match its "
                                                           "TLSA records"), relay, tls_failure=True,
                                       tls_result="tlsa-invalid")
            tls = dataclasses.replace(tls, verified=True, dane=True)
        elif requirement.level == "verify":  # only unusable records: encrypted, not authenticated
            client.close()
            raise ConnectionFailed(Reply(450, "4.7.5", f"the TLSA records of {relay} are all unusable, "
                                                       "so its certificate is not authenticated"), relay,
                                   tls_failure=True)
        return SmtpConnection(client, destination, address, tls, self._timeouts)

    async def _without_tls(self, destination: Destination, address: str, requirement: TlsRequirement,
                           relay: str, failure: BaseException,
                           source: tuple[str | None, str]) -> SmtpConnection:
        """The TLS handshake failed: plaintext when the level allows it (Postfix does the same at
        level "may"), from the same egress IP and EHLO name, else a ConnectionFailed so the next
        host or method is tried."""
        if requirement.level != "may":
            raise ConnectionFailed(_network_reply(failure, f"in TLS handshake with {relay}"), relay,
                                   tls_failure=True)
        client = await self._greet(destination, address, relay, source)
        return SmtpConnection(client, destination, address, TlsSession(), self._timeouts)

    async def _greet(self, destination: Destination, address: str, relay: str,
                     source: tuple[str | None, str]) -> aiosmtplib.SMTP:
        """Connect, read the greeting, EHLO. A 4xx/5xx greeting or EHLO is a ConnectionFailed."""
        source_ip, ehlo = source
        client = aiosmtplib.SMTP(hostname=address, port=destination.port, start_tls=False,
                                 local_hostname=ehlo or self._ehlo_name, timeout=self._timeouts.command,
                                 source_address=(source_ip, 0) if source_ip else None)
        try:
            await client.connect(timeout=self._timeouts.connect)
            client.timeout = self._timeouts.command
            await client.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise ConnectionFailed(Reply.from_smtp(exc.code if exc.code < 500 else 450, exc.message, "4.1"),
                                   relay) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise ConnectionFailed(_network_reply(exc, f"connecting to {relay}"), relay) from None
        return client

    async def _starttls(self, client: aiosmtplib.SMTP, destination: Destination,
                        requirement: TlsRequirement, *, verify: bool) -> TlsSession:
        context = self._verifying if verify else self._any_certificate
        names = requirement.match_names or (destination.host,)
        await client.starttls(tls_context=context, server_hostname=names[0])
        await client.ehlo()
        ssl_object = client.get_transport_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        cipher = ssl_object.cipher()[0] if ssl_object is not None else None
        return TlsSession(version, cipher, verified=verify)


def _certificate_result(error: ssl.SSLCertVerificationError) -> str:
    """The RFC 8460 result-type of a certificate that did not verify."""
    message = (error.verify_message or "").lower()
    if "hostname" in message or "ip address mismatch" in message:
        return "certificate-host-mismatch"
    if "expired" in message:
        return "certificate-expired"
    return "certificate-not-trusted"


def _mail_options(envelope: Envelope, size: int, extensions: dict[str, str], is_7bit: bool) -> list[bytes]:
    options = []
    if "size" in extensions:
        options.append(b"SIZE=%d" % size)
    # 8-bit content is declared even when the client that sent it to us did not (RFC 6152).
    if (envelope.body == "8BITMIME" or not is_7bit) and "8bitmime" in extensions:
        options.append(b"BODY=8BITMIME")
    if envelope.smtputf8:
        options.append(b"SMTPUTF8")
    if envelope.requiretls:
        options.append(b"REQUIRETLS")
    if "dsn" in extensions:
        if envelope.ret:
            options.append(b"RET=" + envelope.ret.encode("ascii"))
        if envelope.envid:
            options.append(b"ENVID=" + encode_xtext(envelope.envid).encode("ascii"))
    return options


def _rcpt_options(recipient: Recipient, extensions: dict[str, str]) -> list[bytes]:
    if "dsn" not in extensions:
        return []
    options = []
    if recipient.notify:
        options.append(b"NOTIFY=" + ",".join(recipient.notify).encode("ascii"))
    if recipient.orcpt:
        options.append(b"ORCPT=" + encode_xtext(recipient.orcpt).encode("ascii"))
    return options


def _network_reply(exc: BaseException, where: str) -> Reply:
    """A network-level failure as a temporary reply (RFC 3463 4.4.x: routing and network)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Reply.from_smtp(exc.code, exc.message)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return Reply(451, "4.4.2", f"timed out {where}")
    if isinstance(exc, ssl.SSLError):
        return Reply(451, "4.7.5", f"TLS failed {where}: {exc.reason or type(exc).__name__}")
    # aiosmtplib wraps the socket's error in SMTPConnectError: say what it was.
    cause = exc.__cause__ if isinstance(exc, aiosmtplib.SMTPConnectError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return Reply(451, "4.4.1", f"connection refused {where}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        reason = getattr(cause, "strerror", None) or "no connection"
        return Reply(451, "4.4.1", f"cannot connect {where}: {reason.lower()}")
    detail = getattr(exc, "strerror", None) or type(exc).__name__
    return Reply(451, "4.4.2", f"lost connection {where}: {detail}")
