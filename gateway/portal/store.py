"""The portal's message store: each message encrypted at rest, found only through its link.

A stored message is one sealed blob, sealed like a spool file (AES-256-GCM under a key derived
per message from the portal master key, `portal.key_file`, which rotates like the spool key),
kept by `state.portal` (a file in `portal.store_dir` on one node, a row in PostgreSQL in a
cluster: there every node needs the same portal key file). The link's token (192 random bits) is
never stored: the blob is named by the SHA-256 of the token, so the store alone cannot produce a
working link, and comparing a presented token is a hash lookup. Metadata (recipient, sender,
times, attempt counters) is sealed in the same blob; revoked and expired messages leave only a
tombstone (id, reason, time) so the recipient sees a clear page instead of "not found".

Every method blocks (disk or database): call it in a thread off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gateway.errors import MailwardError, SpoolError
from gateway.spool.cipher import FileCipher, SpoolKeyring, hkdf_sha256
from gateway.state.portal import LocalPasswordHashes, LocalPortalRecords, PasswordHashes, PortalRecords

_META, _CONTENT = b"meta", b"content"
TOKEN_BYTES = 24


class PortalError(MailwardError):
    """A portal message could not be stored or read."""


def message_id_of(token: str) -> str:
    """The stored id of a link token (the token itself is never kept)."""
    return hashlib.sha256(token.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class PortalMessage:
    message_id: str
    recipient: str
    sender: str
    created: float
    expires: float
    queue_id: str = ""  # the gateway queue id it came from, for the audit trail
    failed_codes: int = 0  # wrong passcodes in a row
    locked_until: float = 0.0
    code_hash: str = ""  # the current one-time passcode, hashed
    code_expires: float = 0.0
    codes_sent: list[float] = field(default_factory=list)  # when passcodes were sent (rate limit)
    viewed: float = 0.0


@dataclass(frozen=True)
class Tombstone:
    message_id: str
    reason: str  # revoked or expired
    at: float


class PortalStore:
    def __init__(self, records: PortalRecords, keyring: SpoolKeyring) -> None:
        self.records = records
        self.keyring = keyring

    @staticmethod
    def _check(message_id: str) -> str:
        if not message_id.isalnum() or len(message_id) != 40:
            raise PortalError("not a portal message id")
        return message_id

    def store(self, content: bytes, *, recipient: str, sender: str, ttl: float,
              queue_id: str = "") -> tuple[str, PortalMessage]:
        """Seal `content` for `recipient`; returns the link token (give it out once) and the record."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        record = PortalMessage(message_id_of(token), recipient, sender, now, now + ttl, queue_id)
        self._write(record, content)
        return token, record

    def _write(self, record: PortalMessage, content: bytes) -> None:
        cipher = FileCipher.create(self.keyring, record.message_id)
        blob = cipher.header + cipher.seal(_META, json.dumps(asdict(record)).encode()) + \
            cipher.seal(_CONTENT, content)
        self.records.put(self._check(record.message_id), blob, record.expires)

    def load(self, message_id: str) -> tuple[PortalMessage, bytes] | Tombstone | None:
        """The record and content, the tombstone if it was revoked or expired, or None."""
        blob = self.records.get(self._check(message_id))
        if blob is None:
            return self._tombstone(message_id)
        try:
            cipher, offset = FileCipher.from_header(self.keyring, message_id, blob)
            records = dict(cipher.records(blob, offset, tolerate_torn_tail=False))
            record = PortalMessage(**json.loads(records[_META]))
        except (SpoolError, KeyError, ValueError, TypeError) as exc:
            raise PortalError(f"portal message {message_id} is unreadable: {exc}") from None
        if record.expires <= time.time():
            self.remove(message_id, "expired")
            return self._tombstone(message_id)
        return record, records[_CONTENT]

    def update(self, record: PortalMessage, content: bytes, **changes: object) -> PortalMessage:
        """Rewrite the record (attempt counters, passcode) with the same content."""
        changed = replace(record, **changes)  # type: ignore[arg-type]
        self._write(changed, content)
        return changed

    def remove(self, message_id: str, reason: str) -> bool:
        """Delete the message for good, leaving a tombstone. False if there was none."""
        return self.records.bury(self._check(message_id), reason, time.time())

    def _tombstone(self, message_id: str) -> Tombstone | None:
        found = self.records.tombstone(message_id)
        return Tombstone(message_id, *found) if found is not None else None

    def lock(self, message_id: str) -> contextlib.AbstractContextManager[None]:
        """Held from loading a record to storing it again, across processes and nodes."""
        return self.records.lock(self._check(message_id))

    def expire(self) -> list[str]:
        """Delete every message past its expiry (an hourly job; `load` deletes an expired
        message it finds); returns their ids."""
        removed = []
        for message_id in self.records.expired(time.time()):
            try:
                if isinstance(self.load(message_id), Tombstone):
                    removed.append(message_id)
            except PortalError:
                continue
        return removed

    def ids(self) -> list[str]:
        return self.records.ids()

    def session_key(self) -> bytes:
        """The key that signs portal session cookies (derived: the same on every node)."""
        return hkdf_sha256(self.keyring.keys[0], b"portal-session", b"mailward session v1")

    def password_hashes(self) -> PasswordHashes:
        """Recipients' password hashes beside the messages (one node's store directory)."""
        if isinstance(self.records, LocalPortalRecords):
            return LocalPasswordHashes(self.records.directory / "passwords.json")
        raise PortalError("a shared portal store needs its shared password hashes")


def open_store(directory: Path, key_file: Path, *, create_key: bool = False,
               records: PortalRecords | None = None) -> PortalStore:
    """The portal store: in `directory`, or in `records` (the cluster's database)."""
    if not key_file.exists() and create_key:
        keyring = SpoolKeyring.create(key_file, rotate=False)
    else:
        keyring = SpoolKeyring.load(key_file)
    return PortalStore(records if records is not None else LocalPortalRecords(directory), keyring)
