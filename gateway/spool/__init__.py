"""The spool: durable, encrypted, state-per-directory message queue (see `store`)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import SpoolConfig
from gateway.errors import KeyFileError
from gateway.spool.cipher import SpoolKeyring
from gateway.spool.store import QueueState, Spool, is_queue_id, new_queue_id

__all__ = ["QueueState", "Spool", "SpoolKeyring", "is_queue_id", "new_queue_id",
           "open_spool"]


def open_spool(config: SpoolConfig, *, create_key: bool = False) -> Spool:
    """Open the spool named by config. With `create_key`, a missing key file is created, but only
    while the spool is empty: a new key cannot read messages that an old, lost key encrypted."""
    key_file: Path = config.key_file
    if create_key and not key_file.exists():
        queued = [p for p in config.dir.glob("*/*") if p.parent.name not in ("tmp", "free")] \
            if config.dir.exists() else []
        if queued:
            raise KeyFileError(
                f"{key_file}: missing, but {config.dir} holds {len(queued)} files encrypted with "
                "it; restore the key file (a new key cannot read them)")
        SpoolKeyring.create(key_file, rotate=False)
    return Spool(config.dir, SpoolKeyring.load(key_file))
