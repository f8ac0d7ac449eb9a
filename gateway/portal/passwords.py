"""Optional recipient passwords: after a first visit with a passcode, a recipient may set a
password and open later messages with it instead of waiting for a passcode mail.

Stored in `portal.store_dir/passwords.json` (0600): the SHA-256 of the address (not the address)
mapped to an argon2id hash. Wrong passwords count towards the same lockout as wrong passcodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.keyfiles import read_secret, write_secret

MIN_LENGTH = 12
_HASHER = PasswordHasher()


class RecipientPasswords:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = json.loads(read_secret(self.path))
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _key(address: str) -> str:
        return hashlib.sha256(address.strip().lower().encode()).hexdigest()

    def has(self, address: str) -> bool:
        return self._key(address) in self._load()

    def set(self, address: str, password: str) -> None:
        """Slow (argon2): call it off the event loop."""
        if len(password) < MIN_LENGTH:
            raise ValueError(f"a password has at least {MIN_LENGTH} characters")
        data = self._load()
        data[self._key(address)] = _HASHER.hash(password)
        write_secret(self.path, json.dumps(data).encode())

    def check(self, address: str, password: str) -> bool:
        """Slow (argon2): call it off the event loop. Constant time in the password."""
        stored = self._load().get(self._key(address))
        if stored is None:
            return False
        try:
            return _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
