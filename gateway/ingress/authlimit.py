"""Limits on failed SMTP AUTH across connections: per client address and per user name.

A per-connection command limit stops one session from guessing forever, but an attacker opens
many. Here every failure counts against the client's address and the user name tried, within
`auth_lockout`. Each failure answers a little later than the one before (growing delays, so a guesser
gets fewer tries per second without holding up anybody else), and at `auth_failures_per_ip` failures
of an address, or `auth_failures_per_user` of a name, that address or name is locked out until
`auth_lockout` has passed since its failures: AUTH then answers 454 without checking the password, so even
the right one does not help the attacker. Each attempt is counted as a failure before its
password is checked (parallel attempts cannot slip past the limit together) and taken back only if
it succeeds; a success clears nothing else (an attacker with one valid account would reset it).

State is in memory in each ingest process (a restart forgets it, which only helps the real
user). Failures are logged as ``event=auth_failed client=ADDRESS user=NAME`` for fail2ban
(`ops/fail2ban/`), audited, and counted in `mailward_auth_failures_total`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import LimitsConfig

FIRST_DELAY = 0.25  # seconds before the answer to the first failure; doubles up to MAX_DELAY
MAX_DELAY = 4.0
_MAX_TRACKED = 100_000  # keys kept in memory; the oldest go first (bounded against a flood)


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)


class AuthThrottle:
    """The limits (`LimitsConfig.auth_*`) are passed in on each call, so a reload applies at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_key: dict[str, _Failures] = {}

    def _recent(self, key: str, now: float, window: float) -> int:
        found = self._by_key.get(key)
        if found is None:
            return 0
        while found.times and now - found.times[0] > window:
            found.times.popleft()
        if not found.times:
            del self._by_key[key]
            return 0
        return len(found.times)

    def begin(self, client_ip: str, user: str, limits: LimitsConfig) -> tuple[str | None, float]:
        """Start an attempt: why it is refused unchecked ("address" or "user"), or None; and
        when it was counted. The attempt counts as a failure from now on, before the password
        is checked, so parallel attempts cannot all pass the limit while they are checked;
        `succeeded` takes it back."""
        now, window = self.clock(), float(limits.auth_lockout)
        if self._recent("ip:" + client_ip, now, window) >= limits.auth_failures_per_ip:
            return "address", now
        if self._recent("user:" + user.lower(), now, window) >= limits.auth_failures_per_user:
            return "user", now
        for key in ("ip:" + client_ip, "user:" + user.lower()):
            if key not in self._by_key and len(self._by_key) >= _MAX_TRACKED:
                del self._by_key[next(iter(self._by_key))]
            self._by_key.setdefault(key, _Failures()).times.append(now)
        return None, now

    def succeeded(self, client_ip: str, user: str, counted: float) -> None:
        for key in ("ip:" + client_ip, "user:" + user.lower()):
            found = self._by_key.get(key)
            if found is not None and counted in found.times:
                found.times.remove(counted)

    def failures(self, client_ip: str, limits: LimitsConfig) -> tuple[int, float]:
        """The address's recent failures and the delay before answering the latest."""
        count = self._recent("ip:" + client_ip, self.clock(), float(limits.auth_lockout))
        return count, min(FIRST_DELAY * 2 ** max(count - 1, 0), MAX_DELAY)
