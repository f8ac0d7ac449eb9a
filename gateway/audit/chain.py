"""The audit record format and its hash chain: the part that makes the log tamper-evident.

Each record is one JSON object per line with ``seq`` (1, 2, 3... across all files), ``ts``
(RFC 3339 UTC), ``event``, ``queue_id``, the event's fields, ``prev`` (the previous record's
``hash``; 64 zeros for the first record ever) and ``hash`` = SHA-256 over the canonical JSON of
everything else (sorted keys, no spaces, UTF-8). ``mac`` = HMAC-SHA256 under the audit key over
``hash``: without the key nobody can rewrite the chain from an edited record onwards, as a bare
hash chain would allow.

`verify_records` walks records in order and names the first one that does not fit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
_SEALS = ("hash", "mac")


def canonical(record: dict[str, Any]) -> bytes:
    body = {key: value for key, value in record.items() if key not in _SEALS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (bytes that were not UTF-8 in an address from an older queue): the
        # record still gets written, with U+FFFD in its place, so verify sees what was hashed.
        return _without_surrogates(text).encode("utf-8")


def _without_surrogates(text: str) -> str:
    return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)


def seal(record: dict[str, Any], key: bytes) -> tuple[str, bytes]:
    """The hash of `record` (with seq, ts, event, prev set) and its line for the file: the
    canonical JSON itself with hash and mac added at the end (so it is serialised once)."""
    body = canonical(record)
    digest = hashlib.sha256(body).hexdigest()
    mac = hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()
    return digest, body[:-1] + f',"hash":"{digest}","mac":"{mac}"}}\n'.encode("ascii")


@dataclass(frozen=True)
class Located:
    """A record with where it was read: file name and 1-based line number."""

    file: str
    line: int
    raw: bytes

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    where: str
    seq: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {'seq ' + str(self.seq) + ': ' if self.seq is not None else ''}{self.message}"


@dataclass
class ChainState:
    """How far a walk got: the last good record's seq and hash, and the anchors seen."""

    seq: int = 0
    hash: str = GENESIS
    records: int = 0
    first_seq: int | None = None
    first_prev: str | None = None
    first_where: str = ""


def verify_records(located: Iterable[Located], key: bytes, state: ChainState) -> Iterator[Problem]:
    """Check each record against the one before; yields the first problem and stops. Anchors
    (retention records) are collected into `state` so the caller can check the log's start."""
    anchors: list[dict[str, Any]] = []
    for item in located:
        try:
            record = json.loads(item.raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            seq, prev, digest, mac = record["seq"], record["prev"], record["hash"], record["mac"]
        except (ValueError, KeyError, TypeError):
            yield Problem(item.where, None, "not a complete audit record (edited or truncated)")
            return
        if state.records == 0:
            state.first_seq, state.first_prev, state.first_where = seq, prev, item.where
        elif seq != state.seq + 1:
            yield Problem(item.where, seq, f"follows seq {state.seq}: records were deleted, inserted "
                                           "or reordered here")
            return
        elif prev != state.hash:
            yield Problem(item.where, seq, "prev does not match the record before: the chain is broken")
            return
        if hashlib.sha256(canonical(record)).hexdigest() != digest:
            yield Problem(item.where, seq, "hash does not match the content: the record was altered")
            return
        expected = hmac.new(key, str(digest).encode("ascii"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(mac)):
            yield Problem(item.where, seq, "MAC does not verify: the record was forged (or this is not "
                                           "the audit key that wrote it)")
            return
        if record.get("event") == "retention":
            anchors.append(record)
        state.seq, state.hash = seq, digest
        state.records += 1
    if state.records and state.first_prev != GENESIS:
        anchored = any(a.get("first_seq") == state.first_seq and a.get("first_prev") == state.first_prev
                       for a in anchors)
        if not anchored:
            yield Problem(state.first_where, state.first_seq,
                          "the log starts after records that are gone, and no retention record "
                          "vouches for this start: older files were removed outside retention")
