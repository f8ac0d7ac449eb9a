"""The portal's message store: each message encrypted at rest, found only through its link.

A stored message is one file in `portal.store_dir`, sealed like a spool file (AES-256-GCM under a
key derived per file from the portal master key, `portal.key_file`, which rotates like the spool
key). The link's token (192 random bits) is never stored: the file is named by the SHA-256 of the
token, so the store alone cannot produce a working link, and comparing a presented token is a
hash lookup. Metadata (recipient, sender, times, attempt counters) is sealed in the same file;
revoked and expired messages leave only a tombstone (id, reason, time) so the recipient sees a
clear page instead of "not found".
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gateway.durable import fsync_dir, write_atomic
from gateway.errors import MailwardError, SpoolError
from gateway.spool.cipher import FileCipher, SpoolKeyring

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
    def __init__(self, directory: Path, keyring: SpoolKeyring) -> None:
        self.directory = directory
        self.keyring = keyring
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, message_id: str) -> Path:
        if not message_id.isalnum() or len(message_id) != 40:
            raise PortalError("not a portal message id")
        return self.directory / f"{message_id}.msg"

    def _tombstone_path(self, message_id: str) -> Path:
        return self.directory / f"{message_id}.gone"

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
        write_atomic(self._path(record.message_id), blob)

    def load(self, message_id: str) -> tuple[PortalMessage, bytes] | Tombstone | None:
        """The record and content, the tombstone if it was revoked or expired, or None."""
        path = self._path(message_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
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
        path = self._path(message_id)
        existed = path.exists()
        write_atomic(self._tombstone_path(message_id),
                     json.dumps({"message_id": message_id, "reason": reason, "at": time.time()}).encode())
        path.unlink(missing_ok=True)
        fsync_dir(self.directory)
        return existed

    def _tombstone(self, message_id: str) -> Tombstone | None:
        try:
            return Tombstone(**json.loads(self._tombstone_path(message_id).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def expire(self) -> list[str]:
        """Delete every message past its expiry (an hourly job; `load` deletes an expired
        message it finds); returns their ids."""
        removed = []
        for message_id in self.ids():
            try:
                if isinstance(self.load(message_id), Tombstone):
                    removed.append(message_id)
            except PortalError:
                continue
        return removed

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.msg") if not p.name.startswith("."))


def open_store(directory: Path, key_file: Path, *, create_key: bool = False) -> PortalStore:
    if not key_file.exists() and create_key:
        keyring = SpoolKeyring.create(key_file, rotate=False)
    else:
        keyring = SpoolKeyring.load(key_file)
    return PortalStore(directory, keyring)


