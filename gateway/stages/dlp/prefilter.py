"""Where a detector could match, for all detectors in one pass: Hyperscan (`hyperscan`) runs every
detector's hints, shapes of what any match must hold (a nine-digit run for an SSN, a label for
an MRN, a condition phrase for the clinical context), over the text at gigabytes a second. The
detectors' own Python checks then run only on slices around the hints, `MARGIN` characters each
side (more than any context window, label or passage): most text of a large export holds none.

Hyperscan matches bytes: the text is encoded as Latin-1 (characters beyond it become "?"), one byte
per character, so offsets are character offsets. A slice never starts or ends inside a word or a
number. Where Hyperscan is not installed (it ships for x86-64 only), or the hints flood (more
than `MAX_HITS`), the caller scans as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

hyperscan: Any
try:
    import hyperscan
except ImportError:  # not on this platform: scan without a prefilter
    hyperscan = None

MARGIN = 300
MAX_HITS = 200_000
_EDGE = 40  # how far a slice's edge moves to reach white space


class Hinted(Protocol):
    @property
    def hints(self) -> tuple[str, ...]: ...
    @property
    def caseless(self) -> bool: ...


class Prefilter:
    """Compiled once per set of detectors (a policy version); `slices` per text."""

    def __init__(self, detectors: Sequence[Hinted]) -> None:
        expressions: list[bytes] = []
        self.owner: list[int] = []
        flags: list[int] = []
        for index, detector in enumerate(detectors):
            for hint in detector.hints:
                expressions.append(hint.encode("latin-1", "replace"))
                self.owner.append(index)
                flags.append(hyperscan.HS_FLAG_CASELESS if detector.caseless else 0)
        self.hinted = frozenset(self.owner)
        self.database: Any = None
        if expressions:
            self.database = hyperscan.Database()
            self.database.compile(expressions=expressions, ids=list(range(len(expressions))),
                                  elements=len(expressions), flags=flags)

    def slices(self, text: str) -> dict[int, list[tuple[int, int]]] | None:
        """Per hinted detector (by index), the slices of `text` to look at; None when the hints
        flooded (look everywhere)."""
        ends: dict[int, list[int]] = {index: [] for index in self.hinted}
        if self.database is None:
            return {}
        count = 0

        def on_match(expression: int, start: int, end: int, flags: int, context: object) -> bool:
            nonlocal count
            count += 1
            ends[self.owner[expression]].append(end)
            return count > MAX_HITS  # True stops the scan

        self.database.scan(text.encode("latin-1", "replace"), match_event_handler=on_match)
        if count > MAX_HITS:
            return None
        size = len(text)
        return {index: _merge(text, found, size) for index, found in ends.items() if found}


_SPACE = re.compile(r"\s")


def _merge(text: str, ends: list[int], size: int) -> list[tuple[int, int]]:
    slices: list[tuple[int, int]] = []
    for end in sorted(ends):
        start = _edge(text, max(0, end - MARGIN), backwards=True)
        stop = _edge(text, min(size, end + MARGIN), backwards=False)
        if slices and start <= slices[-1][1]:
            slices[-1] = (slices[-1][0], max(stop, slices[-1][1]))
        else:
            slices.append((start, stop))
    return slices


def _edge(text: str, position: int, *, backwards: bool) -> int:
    """`position` moved to white space (or the text's end) so a slice cuts no word or number."""
    if position <= 0 or position >= len(text) or text[position].isspace():
        return max(0, min(position, len(text)))
    if backwards:
        space = max(text.rfind(" ", max(0, position - _EDGE), position),
                    text.rfind("\n", max(0, position - _EDGE), position))
        return space if space >= 0 else max(0, position - _EDGE)
    match = _SPACE.search(text, position, min(len(text), position + _EDGE))
    return match.start() if match else min(len(text), position + _EDGE)


def available() -> bool:
    return hyperscan is not None
