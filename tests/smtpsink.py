"""Receiving mail servers for delivery tests: aiosmtpd on 127.0.0.x, with switchable misbehaviour.

A `Sink` records every message it accepts (envelope, content, whether TLS was used) and can be
told to refuse recipients, answer 4xx/5xx to DATA, cap recipients per transaction with 452, or
never answer the end of DATA (a hung server). `start_greeting_refuser` and `start_silent` are
raw servers for a 4xx greeting and a server that accepts but never says anything.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    tls_version: str | None
    peer: str = ""  # the client's (our egress) address
    helo: str = ""
    mail_options: tuple[str, ...] = ()  # MAIL FROM parameters, e.g. BODY=8BITMIME


class Sink:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}  # address -> full reply, e.g. "550 5.1.1 No such user"
        self.data_replies: deque[str] = deque()  # replies for the next DATA commands, then 250
        self.always_data_reply: str | None = None  # answer every DATA with this
        self.max_rcpts: int | None = None  # 452 beyond this many recipients in a transaction
        self.hang_data = False  # swallow the message and never reply
        self.hang_after: int | None = None  # hang_data once this many messages were accepted
        self.offer_requiretls = False  # advertise RFC 8689 REQUIRETLS (and accept the parameter)
        self.requiretls_seen = 0  # MAIL commands that carried REQUIRETLS
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0  # the most connections open at once
        self.rcpt_seen: list[str] = []  # every RCPT address asked for, accepted or not
        self.data_times: list[float] = []  # loop time of each DATA command
        self.data_delay = 0.0  # a slow receiver: seconds before answering DATA
        self.transactions = 0
        self.arrived = asyncio.Event()

    def deliveries(self) -> list[tuple[str, str]]:
        """(recipient, Subject marker) for every recipient of every accepted message."""
        found = []
        for received in self.messages:
            subject = next((line[9:].decode() for line in received.content.splitlines()
                            if line.startswith(b"Subject: ")), "")
            found.extend((rcpt, subject) for rcpt in received.recipients)
        return found

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.offer_requiretls and server._tls_protocol is not None:
            responses.insert(-1, "250-REQUIRETLS")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        self.rcpt_seen.append(address)
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        if self.max_rcpts is not None and len(envelope.rcpt_tos) >= self.max_rcpts:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.transactions += 1
        self.data_times.append(asyncio.get_running_loop().time())
        if self.data_delay:
            await asyncio.sleep(self.data_delay)  # the receiver's own pace, not test timing
        if self.hang_data or (self.hang_after is not None and len(self.messages) >= self.hang_after):
            await asyncio.Event().wait()  # until the client gives up and the server is closed
        if self.data_replies:
            return self.data_replies.popleft()
        if self.always_data_reply:
            return self.always_data_reply
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        content = envelope.original_content or b""
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        self.messages.append(Received(sender, list(envelope.rcpt_tos), content,
                                      ssl_object.version() if ssl_object else None,
                                      session.peer[0] if session.peer else "", session.host_name or "",
                                      tuple(envelope.mail_options)))
        self.arrived.set()
        return "250 2.0.0 OK queued"


class _CountingSMTP(SMTP):
    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection, not the STARTTLS re-wrap of one
            self._sink.connections += 1
            self._sink.open_connections += 1
            self._sink.max_open_connections = max(self._sink.max_open_connections,
                                                  self._sink.open_connections)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink.open_connections -= 1
        super().connection_lost(exc)

    def _getparams(self, params: Any) -> Any:
        found = super()._getparams(params)
        if found is not None:
            requiretls = found.pop("REQUIRETLS", False) is True
            if requiretls and not self._sink.offer_requiretls:
                return None  # not offered: a syntax error, as a server without it would say
            self._sink.requiretls_seen += requiretls
        return found


async def start_sink(host: str, port: int, *, tls_context: ssl.SSLContext | None = None,
                     hostname: str = "mx.test") -> tuple[Sink, asyncio.Server]:
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: _CountingSMTP(sink, hostname=hostname, tls_context=tls_context, require_starttls=False,
                              decode_data=False, enable_SMTPUTF8=True),
        host=host, port=port, reuse_address=True)
    return sink, server


async def start_greeting_refuser(host: str, port: int) -> asyncio.Server:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 Service not available, try another MX\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(refuse, host=host, port=port, reuse_address=True)


async def start_silent(host: str, port: int) -> asyncio.Server:
    """Accepts connections and never sends a byte (a hung server)."""
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes
        writer.close()

    return await asyncio.start_server(hang, host=host, port=port, reuse_address=True)
