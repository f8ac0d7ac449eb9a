"""Console sign-in sessions: server-side, in the memory of the process serving the console.

A session starts after the password (stage ``code``, or ``enrol`` for a user without a second
factor yet, holding the new TOTP secret until it is confirmed) and is signed in only after the
code (stage ``in``). It ends at sign-out, after `idle` seconds unused, or when its user is
removed. Each carries its own CSRF token for the forms of its pages. The cookie holds only the
session's random id.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["code", "enrol", "in"]
MAX_SESSIONS = 10_000


@dataclass
class Session:
    user: str
    stage: Stage
    enrol_secret: str = ""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._sessions: dict[str, Session] = {}

    def start(self, user: str, stage: Stage, enrol_secret: str = "") -> str:
        self._sweep()
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(user, stage, enrol_secret)
        return session_id

    def get(self, session_id: str) -> Session | None:
        """The live session (its idle clock restarted), or None."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def end_user(self, user: str) -> None:
        for session_id in [s for s, session in self._sessions.items() if session.user == user]:
            del self._sessions[session_id]

    def _sweep(self) -> None:
        now = time.monotonic()
        for session_id in [s for s, session in self._sessions.items() if now - session.last_seen > self.idle]:
            del self._sessions[session_id]
        while len(self._sessions) >= MAX_SESSIONS:  # a flood of half-signed-in sessions
            del self._sessions[next(iter(self._sessions))]
