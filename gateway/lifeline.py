"""A child process that dies with its parent (delivery, ingest and DLP scan workers alike).

Kept apart from `workers` so that a scan worker can use it without importing what the gateway's
own children need (audit, config, crypto)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PARENT_ENV = "MAILWARD_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In a child process (delivery, DLP scan workers): be killed when the parent dies, and exit
    now if it already has. `parent` defaults to the pid the delivery process is given."""
    if parent is None:
        parent = int(os.environ.get(PARENT_ENV, "0"))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:
        raise SystemExit("mailward: the gateway process is gone; child process not started")
