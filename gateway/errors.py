"""The one exception tree of Mailward.

Outcomes of processing a message are exceptions (`Reject`, `TempFail`, `Hold`) caught in one place
by whoever drives the message (the SMTP handler before the 250, the scheduler after it). Problems an
admin must fix are `ConfigError` (with file and line) or `SpoolError`. Third-party exceptions are
mapped to these at the module boundary that calls the library, so callers never see them.
"""

from __future__ import annotations

# `mailward` exit codes (SPEC §3): success, a failure the user can fix, a usage error.
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class MailwardError(Exception):
    """Base of every error Mailward raises on purpose."""


class Outcome(MailwardError):
    """A decision about a message, with the SMTP reply that states it."""

    code: int = 0
    status: str = ""

    def __init__(self, text: str, *, code: int | None = None, status: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def reply(self) -> str:
        """The full SMTP reply line, e.g. ``554 5.7.1 Message refused by policy``."""
        return f"{self.code} {self.status} {self.text}"


class Reject(Outcome):
    """Permanent refusal: 5xx to the client, or a bounce after the 250."""

    code = 554
    status = "5.7.1"


class TempFail(Outcome):
    """Try again later: 4xx to the client, or a deferral after the 250."""

    code = 451
    status = "4.3.0"


class Hold(Outcome):
    """Accept but keep the message in the hold queue for an admin to review."""

    code = 250
    status = "2.0.0"


class ConfigError(MailwardError):
    """A configuration or policy problem, located at ``file:line`` when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class RetrySoon(MailwardError):
    """A delivery that must be tried again after `after` seconds, sooner than after an
    unexpected error (e.g. results waiting for the audit log's disk)."""

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason)
        self.after = after


class SpoolError(MailwardError):
    """The spool could not store, read or move a message."""


class KeyFileError(MailwardError):
    """A secret file is missing, malformed or readable by others."""


class StateUnavailable(MailwardError):
    """Shared state (Redis or PostgreSQL) did not answer. Each caller says beside the call
    whether it then fails open (a local share of a limit) or closed (defer, hold, wait)."""
