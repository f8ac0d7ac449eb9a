"""Secret files (keys, password hashes): read only when private, written 0600 and durably.

Secrets never live inline in YAML; config names their files. A secret file that the group or others
may read is refused, with the chmod that fixes it, because a key readable by other local users is
already compromised.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.durable import write_atomic
from gateway.errors import KeyFileError

MAX_SECRET_FILE = 1024 * 1024  # no key or users file is near this; larger is not ours


def read_secret(path: Path, *, allow_group: bool = False) -> bytes:
    """Read a secret file after checking that only its owner (and, if allowed, group) can read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        forbidden = stat.S_IRWXO | (0 if allow_group else stat.S_IRWXG)
        if info.st_mode & forbidden:
            wanted = "640" if allow_group else "600"
            raise KeyFileError(
                f"{path}: mode {stat.S_IMODE(info.st_mode):o} lets other users read a secret; "
                f"run: chmod {wanted} {path}")
        if info.st_size > MAX_SECRET_FILE:
            raise KeyFileError(f"{path}: {info.st_size} bytes is too large for a key file")
        return handle.read(MAX_SECRET_FILE + 1)


def write_secret(path: Path, content: bytes) -> None:
    """Write a secret file 0600 (its directory 0700 if created), atomically and durably."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, content, mode=0o600)


def hex_key(path: Path, *, create: bool) -> bytes:
    """A 256-bit key kept as hex in a 0600 file (audit MAC, unsubscribe links), made on first
    use when `create`."""
    if create and not path.exists():
        write_secret(path, os.urandom(32).hex().encode("ascii") + b"\n")
    try:
        return bytes.fromhex(read_secret(path).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{path}: not a hex key") from None
