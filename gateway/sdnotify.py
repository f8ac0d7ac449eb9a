"""systemd readiness (``Type=notify``): tell the service manager when the gateway is ready, when it
reloads and when it stops, over $NOTIFY_SOCKET (sd_notify(3), a datagram per message).

Only the main process speaks (the unit has NotifyAccess=main); child processes get the variable
removed. Without $NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

ENV = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields; False when there is no manager to tell."""
    path = os.environ.get(ENV)
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall("\n".join(fields).encode())
        return True
    return False


def ready(status: str) -> None:
    notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def reloading() -> None:
    # MONOTONIC_USEC lets systemd (253+, Type=notify-reload) match the reload to this message.
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping(status: str = "draining") -> None:
    notify("STOPPING=1", f"STATUS={status}")


def child_environment(environment: dict[str, str]) -> dict[str, str]:
    """The environment for a child process: without the socket, so only the main process speaks."""
    return {k: v for k, v in environment.items() if k != ENV}
