"""A recipient's keys of every kind, in one place: the local S/MIME and OpenPGP keyrings, then
WKD and DNS when discovery is configured. Delivery asks it which methods a recipient can receive;
the DLP report asks it the same for `policy test`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config import KeysConfig
from gateway.crypto import pgp, smime
from gateway.crypto.discovery import KeyDiscovery
from gateway.crypto.pgp import PgpCertificate
from gateway.crypto.smime import SmimeCertificate


@dataclass(frozen=True)
class Keyrings:
    smime: smime.SmimeKeyring
    pgp: pgp.PgpKeyring
    neutral_subject: str
    discovery: KeyDiscovery | None = None  # WKD and DNS lookups, when configured
    smime_gcm: tuple[str, ...] = ()  # address patterns of recipients that read AES-GCM

    @classmethod
    def load(cls, keys: KeysConfig, discovery: KeyDiscovery | None = None) -> Keyrings:
        revoked = keys.revoked_fingerprints
        return cls(smime.SmimeKeyring(keys.smime_dir, revoked), pgp.PgpKeyring(keys.pgp_dir, revoked),
                   keys.neutral_subject, discovery, keys.smime_gcm)

    async def find_smime(self, address: str) -> SmimeCertificate | None:
        found = self.smime.find(address)
        if found is None and self.discovery is not None:
            found = await self.discovery.find_smime(address)
        return found

    async def find_pgp(self, address: str) -> PgpCertificate | None:
        found = self.pgp.find(address)
        if found is None and self.discovery is not None:
            found = await self.discovery.find_pgp(address)
        return found

    @classmethod
    def empty(cls) -> Keyrings:
        return cls(smime.SmimeKeyring(Path("/nonexistent")), pgp.PgpKeyring(Path("/nonexistent")),
                   "Secure message")
