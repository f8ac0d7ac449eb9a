"""Message bytes on their way in, kept on disk instead of in memory once they are large.

A client may take minutes to send a 150 MB message, and many may do so at once: holding each in
memory while it arrives would make the gateway's memory a function of what strangers send. The
SMTP side keeps a message in memory up to `memory.LARGE` (every ordinary message stays there and
costs nothing more) and beyond that moves it to a `Spill`: an encrypted file in the spool's
``tmp/``, written in sealed records of `RECORD_SIZE` as the bytes arrive.

The file is scratch, never acknowledged: `close` removes it, and the spool's start-up recovery
removes any a crash left behind. Records are AES-GCM under a fresh per-file key (the spool's
`FileCipher`), each bound to its position, so a record cannot be dropped or moved unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from gateway.durable import write_all
from gateway.errors import SpoolError
from gateway.spool.cipher import FileCipher, SpoolKeyring

RECORD_SIZE = 1 << 20


class Spill:
    """Bytes appended in order, read back whole. Not thread-safe."""

    def __init__(self, directory: Path, keyring: SpoolKeyring) -> None:
        self._directory = directory
        self._keyring = keyring
        self._buffer = bytearray()
        self._fd: int | None = None
        self._path: Path | None = None
        self._cipher: FileCipher | None = None
        self._records = 0
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            self._open()
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= RECORD_SIZE:
            self._seal(self._buffer[:RECORD_SIZE])
            del self._buffer[:RECORD_SIZE]

    def getvalue(self) -> bytes:
        """All the bytes written so far, read back into memory."""
        return b"".join((*self._chunks(), self._buffer))

    def _chunks(self) -> Iterator[bytes]:
        """The sealed records read back one at a time and opened, in order (without the tail
        still in memory, which `getvalue` adds)."""
        if self._cipher is None or self._path is None:
            return
        name = self._path.name
        with open(self._path, "rb") as handle:
            handle.seek(len(self._cipher.header))
            for number in range(self._records):
                length = handle.read(4)
                record = length + handle.read(int.from_bytes(length, "big") if len(length) == 4 else 0)
                try:
                    ((kind, plaintext),) = self._cipher.records(record, 0, tolerate_torn_tail=False)
                except ValueError:
                    raise SpoolError(f"{name}: spilled record {number} missing") from None
                if kind != _kind(number):
                    raise SpoolError(f"{name}: spilled records out of order")
                yield plaintext

    def close(self) -> None:
        """Forget the bytes and remove the file; safe to call more than once."""
        self._buffer = bytearray()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            with contextlib.suppress(OSError):  # gone already, or never made (a broken disk)
                self._path.unlink()
            self._path = None

    def _open(self) -> None:
        name = f"spill-{secrets.token_hex(8)}"
        self._path = self._directory / name
        self._cipher = FileCipher.create(self._keyring, name)
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            write_all(self._fd, self._cipher.header)
        except OSError as exc:
            self.close()
            raise SpoolError(f"cannot write a spill file: {exc.strerror}") from exc

    def _seal(self, chunk: bytes | bytearray) -> None:
        assert self._fd is not None and self._cipher is not None
        try:
            write_all(self._fd, self._cipher.seal(_kind(self._records), bytes(chunk)))
        except OSError as exc:
            raise SpoolError(f"cannot write a spill file: {exc.strerror}") from exc
        self._records += 1


def _kind(number: int) -> bytes:
    return b"part%d" % number
