"""Unsubscribe links for marketing streams (RFC 2369 List-Unsubscribe, RFC 8058 one-click).

Each recipient of a marketing pool gets its own copy with

    List-Unsubscribe: <https://PORTAL/u/TOKEN>, <mailto:unsubscribe+MAC@HOSTNAME>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

TOKEN carries the address and sender domain with an HMAC (no state is stored per message); the
mailto form carries only the MAC, which is checked against the address the request comes from
and the sender domains we relay for. A valid request suppresses the address for that sender
domain. Both headers are DKIM signed (they are in the signed set), as RFC 8058 requires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

MAC_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UnsubscribeLinks:
    def __init__(self, key: bytes, *, url_base: str | None, hostname: str, local_part: str) -> None:
        self.key = key
        self.url_base = url_base.rstrip("/") if url_base else None
        self.hostname = hostname
        self.local_part = local_part

    def mac(self, address: str, sender_domain: str) -> str:
        digest = hmac.new(self.key, f"{address.lower()}\n{sender_domain.lower()}".encode(), hashlib.sha256)
        return _b64(digest.digest()[:MAC_BYTES])

    def token(self, address: str, sender_domain: str) -> str:
        payload = _b64(f"{address.lower()}\n{sender_domain.lower()}".encode())
        return f"{payload}.{self.mac(address, sender_domain)}"

    def read_token(self, token: str) -> tuple[str, str] | None:
        """(address, sender domain) of a valid token, else None."""
        payload, _, mac = token.partition(".")
        try:
            address, _, domain = _unb64(payload).decode("utf-8").partition("\n")
        except (ValueError, UnicodeDecodeError):
            return None
        if not address or not domain or not hmac.compare_digest(mac, self.mac(address, domain)):
            return None
        return address, domain

    def mailto_address(self, address: str, sender_domain: str) -> str:
        return f"{self.local_part}+{self.mac(address, sender_domain)}@{self.hostname}"

    def sender_domain_of(self, mac: str, address: str, candidates: Iterable[str]) -> str | None:
        """Which of our sender domains the mailto MAC was made for, given who sent the request."""
        return next((d for d in candidates if hmac.compare_digest(mac, self.mac(address, d))), None)

    def headers(self, address: str, sender_domain: str) -> bytes:
        links = [f"<mailto:{self.mailto_address(address, sender_domain)}?subject=unsubscribe>"]
        post = b""
        if self.url_base:
            links.insert(0, f"<{self.url_base}/u/{self.token(address, sender_domain)}>")
            post = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        return f"List-Unsubscribe: {', '.join(links)}\r\n".encode() + post
