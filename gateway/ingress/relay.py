"""Relay control: who may send through the gateway. Never an open relay.

A client may relay when it connects from ``relay.networks``, has authenticated with SMTP AUTH,
or presented a verified TLS client certificate whose subject CN or a SAN matches
``relay.client_cert_subjects`` (exact, or ``*.example.com`` for exactly one leading label; this is
how an Exchange Online connector proves itself). Everyone else is refused at RCPT. A listener
with a ``relay`` block of its own uses its networks, certificate names and AUTH switch instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.config import ListenerRelayConfig, RelayConfig
from gateway.typedyaml import address_in


@dataclass(frozen=True)
class RelayPolicy:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    cert_subjects: frozenset[str]
    cert_wildcards: frozenset[str]  # the parent domains of "*.parent" patterns
    sender_domains: frozenset[str]
    auth: bool = True  # authenticated users may relay

    @classmethod
    def from_config(cls, relay: RelayConfig, listener: ListenerRelayConfig | None = None) -> RelayPolicy:
        networks = listener.networks if listener is not None else relay.networks
        names = listener.client_cert_subjects if listener is not None else relay.client_cert_subjects
        subjects = [s.lower().rstrip(".") for s in names]
        return cls(
            networks=tuple(n.network for n in networks),
            cert_subjects=frozenset(s for s in subjects if not s.startswith("*.")),
            cert_wildcards=frozenset(s[2:] for s in subjects if s.startswith("*.")),
            sender_domains=frozenset(d.lower().rstrip(".") for d in relay.sender_domains),
            auth=listener.auth if listener is not None else True,
        )

    def in_networks(self, client_ip: str) -> bool:
        return address_in(client_ip, self.networks)

    def cert_matches(self, names: list[str]) -> str | None:
        """The first certificate name that the configured subjects allow, if any."""
        for name in names:
            lowered = name.lower().rstrip(".")
            if lowered in self.cert_subjects:
                return name
            label, _, parent = lowered.partition(".")
            if label and label != "*" and parent in self.cert_wildcards:
                return name
        return None

    def relay_reason(self, client_ip: str, auth_user: str | None, cert_name: str | None) -> str | None:
        """Why this client may relay ("network", "auth", "certificate"), or None: it may not."""
        if auth_user is not None and self.auth:
            return "auth"
        if cert_name is not None:
            return "certificate"
        if self.in_networks(client_ip):
            return "network"
        return None

    def sender_allowed(self, sender: str) -> bool:
        """The null sender and any sender pass when no sender domains are configured."""
        if not self.sender_domains or not sender:
            return True
        return sender.rpartition("@")[2].lower().rstrip(".") in self.sender_domains
