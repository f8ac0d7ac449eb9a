"""At-rest encryption of spool files: AES-256-GCM under a per-file key.

File layout (all integers big-endian)::

    "MWSP" | version (1) | key-id length (1) | key id | salt (16)      -- header
    record*: length (4) | kind length (1) | kind | nonce (12) | ciphertext+tag

The file key is HKDF-SHA256(master key, salt); a fresh salt per file means nonces never need to
be coordinated across processes or counted against the master key's GCM limit. Each record's
associated data binds it to its file id and kind, so records cannot be swapped between messages
or between the metadata and content slots. The header names the master key by id, so after
``mailward keygen spool --rotate`` old files stay readable while new ones use the new key.

The key file holds one base64 key per line, newest first; the first line encrypts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import KeyFileError, SpoolError
from gateway.keyfiles import read_secret, write_secret

MAGIC = b"MWSP"
VERSION = 1
SALT_SIZE = 16
NONCE_SIZE = 12
KEY_SIZE = 32
TAG_SIZE = 16
STREAM_PIECE = 1 << 20  # bytes encrypted at a time by `seal_stream`
_HKDF_INFO = b"mailward spool file v1"
MAX_RECORD = 1 << 31  # a record length above this is corruption, not data


@functools.lru_cache(maxsize=16)
def key_id(key: bytes) -> str:
    """A short public name for a master key (not a secret: a hash with a domain prefix)."""
    return hashlib.sha256(b"mailward spool key id\0" + key).hexdigest()[:12]


def hkdf_sha256(master: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) for one 32-byte output block, written out with the standard
    library's HMAC: the same bytes as cryptography's HKDF at a fraction of the per-file cost,
    which matters when every message gets its own key."""
    pseudo_random_key = hmac.digest(salt, master, "sha256")
    return hmac.digest(pseudo_random_key, info + b"\x01", "sha256")


@dataclass(frozen=True)
class SpoolKeyring:
    """Master keys, newest first. Only the first encrypts; all of them decrypt."""

    keys: tuple[bytes, ...]

    @property
    def current_id(self) -> str:
        return key_id(self.keys[0])

    def key(self, wanted: str) -> bytes:
        for key in self.keys:
            if key_id(key) == wanted:
                return key
        raise SpoolError(f"spool file is encrypted with key {wanted}, which is not in the key file")

    @classmethod
    def load(cls, path: Path) -> SpoolKeyring:
        lines = [line.strip() for line in read_secret(path).decode("ascii", "replace").splitlines()]
        keys = []
        for number, line in enumerate(lines, start=1):
            if not line or line.startswith("#"):
                continue
            try:
                key = base64.b64decode(line, validate=True)
            except ValueError:
                raise KeyFileError(f"{path}:{number}: not a base64 key") from None
            if len(key) != KEY_SIZE:
                raise KeyFileError(f"{path}:{number}: a spool key is {KEY_SIZE} bytes, "
                                   f"this one is {len(key)}")
            keys.append(key)
        if not keys:
            raise KeyFileError(f"{path}: no key in file (mailward keygen spool)")
        return cls(tuple(keys))

    @staticmethod
    def create(path: Path, *, rotate: bool) -> SpoolKeyring:
        """Write a new key to `path`; with `rotate`, keep the old keys after it for decryption."""
        old: tuple[bytes, ...] = ()
        if path.exists():
            if not rotate:
                raise KeyFileError(f"{path} exists; use --rotate to add a new key in front of it")
            old = SpoolKeyring.load(path).keys
        keyring = SpoolKeyring((AESGCM.generate_key(bit_length=256), *old))
        lines = [base64.b64encode(k).decode() for k in keyring.keys]
        write_secret(path, ("\n".join(lines) + "\n").encode())
        return keyring


class FileCipher:
    """The cipher of one spool file: created for writing, or opened from an existing header."""

    def __init__(self, master: bytes, master_id: str, file_id: str, salt: bytes) -> None:
        self._key = hkdf_sha256(master, salt, _HKDF_INFO)
        self._aead = AESGCM(self._key)
        self._file_id = file_id.encode()
        self._header = MAGIC + bytes([VERSION, len(master_id)]) + master_id.encode() + salt

    @classmethod
    def create(cls, keyring: SpoolKeyring, file_id: str) -> FileCipher:
        return cls(keyring.keys[0], keyring.current_id, file_id, os.urandom(SALT_SIZE))

    @classmethod
    def from_header(cls, keyring: SpoolKeyring, file_id: str, blob: bytes) -> tuple[FileCipher, int]:
        """Open the header at the start of `blob`; return the cipher and where records begin."""
        if len(blob) < 6 or blob[:4] != MAGIC or blob[4] != VERSION:
            raise SpoolError(f"{file_id}: not a spool file of a known version")
        id_end = 6 + blob[5]
        if len(blob) < id_end + SALT_SIZE:
            raise SpoolError(f"{file_id}: truncated spool file header")
        master_id = blob[6:id_end].decode("ascii", "replace")
        salt = blob[id_end:id_end + SALT_SIZE]
        return cls(keyring.key(master_id), master_id, file_id, salt), id_end + SALT_SIZE

    @property
    def header(self) -> bytes:
        return self._header

    def seal(self, kind: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, plaintext, self._aad(kind))
        length = 1 + len(kind) + NONCE_SIZE + len(sealed)
        return b"".join((struct.pack(">IB", length, len(kind)), kind, nonce, sealed))  # one copy

    def seal_stream(self, kind: bytes, parts: Sequence[bytes]) -> Iterator[bytes]:
        """The same record as `seal` of the parts joined, made and handed out a piece at a time
        (AES-GCM is a stream cipher with a tag at the end): a 100 MB message is written through
        a megabyte of memory, not copied whole, then encrypted whole, then joined."""
        nonce = os.urandom(NONCE_SIZE)
        size = sum(len(part) for part in parts)
        yield struct.pack(">IB", 1 + len(kind) + NONCE_SIZE + size + TAG_SIZE, len(kind)) + kind + nonce
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(self._aad(kind))
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), STREAM_PIECE):
                yield encryptor.update(view[start:start + STREAM_PIECE])
        yield encryptor.finalize() + encryptor.tag

    def records(self, blob: bytes, offset: int, *, tolerate_torn_tail: bool) -> list[tuple[bytes, bytes]]:
        """Decrypt the records in `blob` from `offset`: [(kind, plaintext)].

        A journal may end in a record cut short by a crash mid-append; with `tolerate_torn_tail`
        that last partial record is ignored (its write was never acknowledged). Anything else that
        fails to decrypt is corruption and raises SpoolError."""
        found = []
        view = memoryview(blob)
        while offset < len(blob):
            if offset + 4 > len(blob):
                break
            (length,) = struct.unpack_from(">I", blob, offset)
            end = offset + 4 + length
            if length > MAX_RECORD or end > len(blob):
                break
            body = view[offset + 4:end]
            kind_end = 1 + body[0]
            kind = bytes(body[1:kind_end])
            nonce = bytes(body[kind_end:kind_end + NONCE_SIZE])
            try:
                found.append((kind, self._aead.decrypt(nonce, body[kind_end + NONCE_SIZE:],
                                                       self._aad(kind))))
            except (InvalidTag, ValueError):
                if tolerate_torn_tail and end == len(blob):
                    break
                raise SpoolError(f"{self._file_id.decode()}: a record failed authentication "
                                 "(corrupt, or tampered with)") from None
            offset = end
        else:
            return found
        if not tolerate_torn_tail:
            raise SpoolError(f"{self._file_id.decode()}: truncated spool file")
        return found

    def _aad(self, kind: bytes) -> bytes:
        return MAGIC + self._file_id + b"\0" + kind
