"""Where the portal keeps its sealed records and recipients' password hashes.

The portal (`portal.store`) seals each message itself (AES-256-GCM under the portal key) and
hands these stores opaque blobs, so neither a file nor a database row holds readable content.
On one node the blobs are files in `portal.store_dir`; in a cluster they are rows in PostgreSQL
(`state.postgres.PgPortalRecords`), so any node serves any link. All calls block: the portal
calls them in a thread.

`lock` serialises the read-check-write of one message's attempt counters across processes and
nodes (a wrong passcode on node A and one on node B are both counted).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Protocol

from gateway.durable import fsync_dir, write_atomic
from gateway.keyfiles import read_secret, write_secret


class PortalRecords(Protocol):
    def put(self, message_id: str, blob: bytes, expires: float) -> None: ...

    def get(self, message_id: str) -> bytes | None: ...

    def bury(self, message_id: str, reason: str, at: float) -> bool:
        """Delete the blob for good, leaving a tombstone; whether there was one."""
        ...

    def tombstone(self, message_id: str) -> tuple[str, float] | None:
        """(reason, time) of a buried message."""
        ...

    def expired(self, now: float) -> list[str]:
        """Ids that may be past their expiry (the caller checks each)."""
        ...

    def ids(self) -> list[str]: ...

    def lock(self, message_id: str) -> contextlib.AbstractContextManager[None]: ...


class PasswordHashes(Protocol):
    """argon2 hashes by a key (the SHA-256 of the recipient's address)."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, password_hash: str) -> None: ...


class LocalPortalRecords:
    """One file per message (``ID.msg``), a tombstone file per buried one (``ID.gone``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, message_id: str, suffix: str) -> Path:
        return self.directory / f"{message_id}.{suffix}"

    def put(self, message_id: str, blob: bytes, expires: float) -> None:
        write_atomic(self._path(message_id, "msg"), blob)

    def get(self, message_id: str) -> bytes | None:
        try:
            return self._path(message_id, "msg").read_bytes()
        except FileNotFoundError:
            return None

    def bury(self, message_id: str, reason: str, at: float) -> bool:
        path = self._path(message_id, "msg")
        existed = path.exists()
        write_atomic(self._path(message_id, "gone"),
                     json.dumps({"message_id": message_id, "reason": reason, "at": at}).encode())
        path.unlink(missing_ok=True)
        fsync_dir(self.directory)
        return existed

    def tombstone(self, message_id: str) -> tuple[str, float] | None:
        try:
            found = json.loads(self._path(message_id, "gone").read_text())
            return str(found["reason"]), float(found["at"])
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def expired(self, now: float) -> list[str]:
        return self.ids()  # the expiry is inside each sealed file

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.msg") if not p.name.startswith("."))

    def lock(self, message_id: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # one portal process: its own per-message lock suffices


class LocalPasswordHashes:
    """``passwords.json`` (0600) in the portal's store directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = json.loads(read_secret(self.path))
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def put(self, key: str, password_hash: str) -> None:
        data = self._load()
        data[key] = password_hash
        write_secret(self.path, json.dumps(data).encode())
