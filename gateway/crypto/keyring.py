"""What the S/MIME and OpenPGP keyrings share: read every key file of a directory once per
(re)load, index the usable keys by address, and pick the one that stays valid longest."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from gateway import eventlog

log = logging.getLogger("mailward.keys")
_NEVER = datetime.datetime.max.replace(tzinfo=datetime.UTC)


class Key(Protocol):
    @property
    def addresses(self) -> frozenset[str]: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def expires(self) -> datetime.datetime | None: ...  # None: never
    def valid_at(self, when: datetime.datetime) -> bool: ...


K = TypeVar("K", bound=Key)


class DirectoryKeyring(Generic[K]):
    """`read(path)` turns one file into usable keys (it logs and skips the unusable ones) and
    raises for a file it cannot read at all, which is logged and skipped here."""

    def __init__(self, directory: Path, kind: str, suffixes: tuple[str, ...],
                 read: Callable[[Path], list[K]]) -> None:
        self.directory = directory
        self._by_address: dict[str, list[K]] = {}
        for path in sorted(directory.glob("*")) if directory.is_dir() else []:
            if path.suffix.lower() not in suffixes or not path.is_file():
                continue
            try:
                keys = read(path)
            except (OSError, ValueError, RuntimeError) as exc:
                eventlog.event(log, "key_unreadable", logging.WARNING, kind=kind, file=path,
                               error=type(exc).__name__)
                continue
            for key in keys:
                for address in key.addresses:
                    self._by_address.setdefault(address, []).append(key)

    def find(self, address: str, when: datetime.datetime | None = None) -> K | None:
        """The usable key for `address` that stays valid longest, or None."""
        now = when or datetime.datetime.now(datetime.UTC)
        valid = [k for k in self._by_address.get(address.lower(), []) if k.valid_at(now)]
        return max(valid, key=lambda k: k.expires or _NEVER, default=None)

    def __len__(self) -> int:
        return len({k.fingerprint for keys in self._by_address.values() for k in keys})
