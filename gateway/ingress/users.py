"""SMTP AUTH users: argon2id hashes in ``relay.users_file`` (YAML, 0600).

File format::

    users:
      scanner@example.com: "$argon2id$v=19$m=65536,t=3,p=4$..."

The gateway re-reads the file when its mtime changes, so ``mailward user add`` takes effect on the
next AUTH without a reload. Verification costs tens of milliseconds of CPU by design, so callers run
`verify` in a worker thread; an unknown user is checked against a dummy hash so that the time taken
does not tell which user names exist.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.errors import KeyFileError
from gateway.keyfiles import read_secret, write_secret

_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked for an unknown user, so that it takes as long as a known one. Made on first use,
    not at import: an argon2 hash takes 64 MB for a moment, and every gateway process imports
    this module while only those that check a password need it."""
    return _HASHER.hash("mailward-dummy-password-for-timing")

_USER_NAME = re.compile(r"^[A-Za-z0-9._%+@-]{1,255}$")


class UserStore:
    """The users file, cached in memory and reloaded when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._hashes: dict[str, str] = {}

    def verify(self, user: str, password: str) -> bool:
        """True when `user` exists and `password` matches. Blocking: call from a worker thread."""
        stored = self._current().get(user)
        dummy = _dummy_hash()  # for known users too: the first check costs the same for all
        try:
            return _HASHER.verify(stored or dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def names(self) -> list[str]:
        return sorted(self._current())

    def add(self, user: str, password: str) -> None:
        if not _USER_NAME.match(user):
            raise ValueError(f"user name {user!r}: use letters, digits and . _ % + @ - only")
        if len(password) < 12:
            raise ValueError("password: use at least 12 characters")
        hashes = dict(self._current())
        hashes[user] = _HASHER.hash(password)
        self._write(hashes)

    def remove(self, user: str) -> bool:
        hashes = dict(self._current())
        if hashes.pop(user, None) is None:
            return False
        self._write(hashes)
        return True

    def _current(self) -> dict[str, str]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._hashes = self._parse(read_secret(self.path))
                self._stamp = stamp
            return self._hashes

    def _parse(self, raw: bytes) -> dict[str, str]:
        try:
            document = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            raise KeyFileError(f"{self.path}: not valid YAML: {exc}") from None
        users = document.get("users", {}) if isinstance(document, dict) else None
        if not isinstance(users, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v.startswith("$argon2")
                for k, v in users.items()):
            raise KeyFileError(f"{self.path}: expected 'users:' mapping names to argon2 hashes")
        return users

    def _write(self, hashes: dict[str, str]) -> None:
        text = yaml.safe_dump({"users": dict(sorted(hashes.items()))}, default_flow_style=False)
        write_secret(self.path, text.encode())
