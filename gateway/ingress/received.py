"""The ``Received:`` trace header the gateway prepends (RFC 5321 §4.4, protocols per RFC 3848).

It records the client's HELO name and address, the TLS version and cipher, and the queue id; it
never names the authenticated user (like Postfix's default), so the header cannot leak an account.
"""

from __future__ import annotations

import email.utils
import time

from gateway.message import ClientInfo


def received_header(client: ClientInfo, hostname: str, queue_id: str, recipients: list[str],
                    *, smtputf8: bool, now: float | None = None) -> bytes:
    protocol = ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if client.tls_version else "") + \
        ("A" if client.auth_user else "")
    helo = _printable(client.helo)[:255]
    lines = [f"Received: from {helo} ([{client.address}])", f"\tby {hostname} (Mailward)"]
    if client.tls_version:
        lines.append(f"\t(using {client.tls_version} with cipher {client.tls_cipher})")
    tail = f"\twith {protocol} id {queue_id}"
    if len(recipients) == 1:
        # One recipient is named (the usual trace); several would make the header a list of them.
        lines.append(tail)
        tail = f"\tfor <{_printable(recipients[0])}>"
    date = email.utils.formatdate(now if now is not None else time.time(), localtime=False)
    lines.append(f"{tail}; {date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _printable(text: str) -> str:
    """Keep header-safe characters only: a HELO name is client input and must not fold headers."""
    return "".join(ch if ch.isprintable() and ch not in "()\\" else "?" for ch in text)
