"""What happened to one recipient in one delivery attempt."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.delivery.client import Reply, TlsSession


@dataclass(frozen=True)
class Attempt:
    index: int
    reply: Reply
    relay: str = "none"  # host[ip]:port, or "none" when no connection was made
    remote_host: str | None = None
    tls: TlsSession = TlsSession()
    passes_dsn: bool = False  # the next hop took our DSN parameters
    protection: str = ""  # tls-verified, tls, smime, pgp, portal, none; "" = from the TLS session
    tls_failure: bool = False  # the connection could not meet the TLS requirement
    hold: bool = False  # the message goes to hold/ for an admin (the portal is not there yet)
    remote_ip: str | None = None
    egress_ip: str | None = None  # our source address on the connection
    dkim: str = ""  # "domain:selector,selector" of the signatures on what was sent
    note: str = ""  # for protected recipients: why stronger methods were not used
    pool: str = "default"  # the egress pool it left from
    retry_after: float = 0.0  # held back by shaping or warm-up: try again after this many seconds
    drop: bool = False  # suppressed, and the sender is not told: no DSN

    @property
    def protection_used(self) -> str:
        if self.protection:
            return self.protection
        return "none" if self.tls.version is None else ("tls-verified" if self.tls.verified else "tls")
