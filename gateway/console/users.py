"""Console users: name, role, argon2id password hash, TOTP secret, and lockout state, in
`console.users_file` (JSON, 0600), managed with ``mailward console user add|remove|list``.

Roles, each including the one before: ``viewer`` (message trace, reports, health; never
content), ``reviewer`` (also held messages' content, release and delete), ``admin`` (also users).
A user enrols a TOTP second factor at the first sign-in (the secret is made then and kept here);
until then only the password is asked, followed by the enrolment. `MAX_FAILURES` wrong passwords
or codes in a row lock the user for `LOCKOUT`; a code is accepted once (a replayed one fails).
Checking a password costs tens of milliseconds of CPU by design: call `check_password` in a
thread. An unknown user is checked against a dummy hash, so the time taken does not tell which
names exist.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.keyfiles import read_secret, write_secret

Role = Literal["viewer", "reviewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "reviewer", "admin")
MAX_FAILURES = 5
LOCKOUT = 900.0
MIN_PASSWORD = 12
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    return _HASHER.hash("mailward-console-dummy-password")


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    role: Role
    password_hash: str
    totp_secret: str = ""  # base32; "" until enrolled
    failures: int = 0
    locked_until: float = 0.0
    totp_step: int = 0  # the time step of the last code accepted: a code works once

    def may(self, role: Role) -> bool:
        """Whether this user has `role` or a stronger one."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def locked(self, now: float | None = None) -> bool:
        return self.locked_until > (now or time.time())


class ConsoleUsers:
    """The users file; every change is written at once (atomically, 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, ConsoleUser]:
        if not self.path.exists():
            return {}
        data = json.loads(read_secret(self.path))
        return {name: ConsoleUser(name=name, **fields) for name, fields in data.get("users", {}).items()}

    def _save(self, users: dict[str, ConsoleUser]) -> None:
        data: dict[str, Any] = {"users": {
            name: {k: v for k, v in dataclasses.asdict(user).items() if k != "name"}
            for name, user in sorted(users.items())}}
        write_secret(self.path, json.dumps(data, indent=1).encode())

    def get(self, name: str) -> ConsoleUser | None:
        return self._load().get(name)

    def all(self) -> list[ConsoleUser]:
        return list(self._load().values())

    def add(self, name: str, role: str, password: str) -> bool:
        """Add a user or replace one's password and role (a new password also drops the TOTP
        enrolment: the user enrols again). True if the user is new. Slow (argon2)."""
        if not _NAME.fullmatch(name):
            raise ValueError("a user name is letters, digits, '.', '_', '@' and '-', at most 64")
        if role not in ROLES:
            raise ValueError(f"the role is one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
        hashed = _HASHER.hash(password)
        with self._lock:
            users = self._load()
            new = name not in users
            users[name] = ConsoleUser(name, role, hashed)
            self._save(users)
        return new

    def remove(self, name: str) -> bool:
        with self._lock:
            users = self._load()
            if users.pop(name, None) is None:
                return False
            self._save(users)
            return True

    def check_password(self, name: str, password: str) -> ConsoleUser | None:
        """The user if `password` is right and the user not locked; a wrong one is counted.
        Slow (argon2): call it in a thread."""
        user = self.get(name)
        right: bool
        try:
            right = _HASHER.verify(user.password_hash if user else _dummy_hash(), password[:200])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            right = False
        if user is None or user.locked():
            return None
        if not right:
            self.failed(name)
            return None
        return user

    def check_code(self, user: ConsoleUser, code: str, secret: str | None = None) -> bool:
        """The TOTP code (of `secret` while enrolling, else of the user's own); a wrong one is
        counted towards the lockout. One time step either side is accepted (clock drift)."""
        current = self.get(user.name)
        if current is None or current.locked():
            return False
        key = secret or current.totp_secret
        step = _matching_step(key, code.strip()[:10]) if key else None
        if step is not None and step > current.totp_step:
            with self._lock:
                users = self._load()
                users[user.name] = dataclasses.replace(users[user.name], failures=0, locked_until=0.0,
                                                       totp_secret=key, totp_step=step)
                self._save(users)
            return True
        self.failed(user.name)
        return False

    def failed(self, name: str) -> ConsoleUser | None:
        """Count a wrong password or code; the last allowed one locks the user."""
        with self._lock:
            users = self._load()
            user = users.get(name)
            if user is None:
                return None
            failures = user.failures + 1
            if failures >= MAX_FAILURES:
                user = dataclasses.replace(user, failures=0, locked_until=time.time() + LOCKOUT)
            else:
                user = dataclasses.replace(user, failures=failures)
            users[name] = user
            self._save(users)
            return user


def _matching_step(secret: str, code: str) -> int | None:
    """The time step whose code `code` is, within one step of now (clock drift), else None."""
    totp = pyotp.TOTP(secret)
    now = time.time()
    for offset in (0, -1, 1):
        moment = now + offset * totp.interval
        if hmac.compare_digest(totp.at(moment), code):
            return int(moment) // totp.interval
    return None


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, name: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)
