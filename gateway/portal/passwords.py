"""Optional recipient passwords: after a first visit with a passcode, a recipient may set a
password and open later messages with it instead of waiting for a passcode mail.

Kept by `state.portal` (``passwords.json``, 0600, in `portal.store_dir` on one node; PostgreSQL
in a cluster): the SHA-256 of the address (not the address) mapped to an argon2id hash. Wrong
passwords count towards the same lockout as wrong passcodes. Every method blocks: call it in a
thread.
"""

from __future__ import annotations

import hashlib

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.state.portal import PasswordHashes

MIN_LENGTH = 12
_HASHER = PasswordHasher()


class RecipientPasswords:
    def __init__(self, hashes: PasswordHashes) -> None:
        self.hashes = hashes

    @staticmethod
    def _key(address: str) -> str:
        return hashlib.sha256(address.strip().lower().encode()).hexdigest()

    def has(self, address: str) -> bool:
        return self.hashes.get(self._key(address)) is not None

    def set(self, address: str, password: str) -> None:
        """Slow (argon2): call it off the event loop."""
        if len(password) < MIN_LENGTH:
            raise ValueError(f"a password has at least {MIN_LENGTH} characters")
        self.hashes.put(self._key(address), _HASHER.hash(password))

    def check(self, address: str, password: str) -> bool:
        """Slow (argon2): call it off the event loop. Constant time in the password."""
        stored = self.hashes.get(self._key(address))
        if stored is None:
            return False
        try:
            return _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
