"""Where a detector could match, for all detectors in one pass: Hyperscan (`hyperscan`) runs every
detector's hints, shapes of what any match must hold (a nine-digit run for an SSN, a label for
an MRN, a condition phrase for the clinical context), over the text at gigabytes a second. The
detectors' own Python checks then run only on slices around the hints, `MARGIN` characters each
side (more than any context window, label or passage): most text of a large export holds none.

Hyperscan matches bytes: the text is encoded as Latin-1 (characters beyond it become "?"), one byte
per character, so offsets are character offsets. A slice never starts or ends inside a word or a
number. Where Hyperscan is not installed (it ships for x86-64 only), or the hints flood (more
than `MAX_HITS`), the caller scans as before.

A custom detector's own regular expression serves as its hint where that is safe (`pattern_hint`):
Hyperscan compiles it in prefilter mode, which stands in for what it cannot run (lookarounds, back
references) with a wider expression, so its matches are a superset of Python's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from re import _constants as sre  # type: ignore[attr-defined]  # a pattern's parsed form:
from re import _parser as sre_parse  # type: ignore[attr-defined]  # its width and anchors
from typing import Any, Protocol

hyperscan: Any
try:
    import hyperscan
except ImportError:  # not on this platform: scan without a prefilter
    hyperscan = None

MARGIN = 300
MAX_HITS = 200_000
EDGE = 40  # how far a slice's edge moves to reach white space


class Hinted(Protocol):
    @property
    def hints(self) -> tuple[str, ...]: ...
    @property
    def caseless(self) -> bool: ...
    @property
    def hints_plain_only(self) -> bool: ...
    @property
    def hints_alone(self) -> bool: ...


class Prefilter:
    """Compiled once per set of detectors (a policy version); `slices` per text.

    The hints go into a few databases, not one: Hyperscan runs a set of caseless words and a set
    of case-sensitive number shapes faster apart than together, and a custom pattern (its shape
    unknown; one that starts with a broad class slows every hint it shares a database with) gets
    one of its own. Measured over a 3 MB export: 15 ms in one database, 8 ms in three."""

    def __init__(self, detectors: Sequence[Hinted]) -> None:
        groups: dict[tuple[bool, int], list[tuple[int, str]]] = {}
        for index, detector in enumerate(detectors):
            if detector.hints:
                key = (detector.caseless, index if detector.hints_alone else -1)
                groups.setdefault(key, []).extend((index, hint) for hint in detector.hints)
        self.hinted = frozenset(index for hints in groups.values() for index, _ in hints)
        self.plain_only = frozenset(index for index in self.hinted if detectors[index].hints_plain_only)
        self.databases: list[tuple[Any, list[int]]] = []  # (database, owner of each expression)
        for (caseless, _), hints in sorted(groups.items()):
            database = hyperscan.Database()
            database.compile(expressions=[hint.encode("latin-1", "replace") for _, hint in hints],
                             ids=list(range(len(hints))), elements=len(hints), flags=_flags(caseless))
            self.databases.append((database, [index for index, _ in hints]))

    def slices(self, text: str) -> dict[int, list[tuple[int, int]]] | None:
        """Per hinted detector (by index), the slices of `text` to look at; None when the hints
        flooded (look everywhere)."""
        ends: dict[int, list[int]] = {index: [] for index in self.hinted}
        count = 0
        encoded = text.encode("latin-1", "replace")
        for database, owner in self.databases:

            def on_match(expression: int, start: int, end: int, flags: int, context: object,
                         owner: list[int] = owner) -> bool:
                nonlocal count
                count += 1
                ends[owner[expression]].append(end)
                return count > MAX_HITS  # True stops the scan

            database.scan(encoded, match_event_handler=on_match)
            if count > MAX_HITS:
                return None
        size = len(text)
        found = {index: _merge(text, hits, size) for index, hits in ends.items() if hits}
        if self.plain_only and not plain(text):
            found.update({index: [(0, size)] for index in self.plain_only})
        return found


def _flags(caseless: bool) -> int:
    # Prefilter mode: what Hyperscan cannot run as written (a lookaround) it widens; at worst a
    # hint matches more than it must, which costs a look at a slice, never a finding.
    flags: int = hyperscan.HS_FLAG_PREFILTER | (hyperscan.HS_FLAG_CASELESS if caseless else 0)
    return flags


# A letter, digit or space beyond ASCII: Python's \w, \d, \s and \b see it, Hyperscan's do not.
_UNICODE_CLASSED = re.compile(r"[^\W\x00-\x7f]|[^\S\x00-\x7f]")


def plain(text: str) -> bool:
    """Whether Python's character classes mean in `text` what Hyperscan's mean in its bytes."""
    return text.isascii() or _UNICODE_CLASSED.search(text) is None


def pattern_hint(pattern: re.Pattern[str], window: int) -> tuple[tuple[str, ...], bool]:
    """A custom detector's regular expression as its own hint, and whether that hint holds only
    in `plain` text; ((), False) where it cannot serve: a match and the context `window` around
    it must fit in a slice, the pattern may not be anchored to the start or end of the text or a
    line (a slice starts elsewhere), and Hyperscan must compile it. Only ASCII patterns, and none
    with what the two read differently: a POSIX class, a repeat without its minimum."""
    source = pattern.pattern
    if hyperscan is None or not source.isascii() or "[:" in source or "{," in source:
        return (), False
    try:
        parsed = sre_parse.parse(source, pattern.flags)
    except (re.error, RecursionError):
        return (), False
    if parsed.getwidth()[1] + window > MARGIN - EDGE or _anchored(parsed):
        return (), False
    try:
        hyperscan.Database().compile(expressions=[source.encode()],
                                     flags=[_flags(bool(pattern.flags & re.IGNORECASE))])
    except hyperscan.error:
        return (), False
    return (source,), any(
        (op is sre.IN and any(kind is sre.CATEGORY and value in _UNICODE_CATEGORIES for kind, value in av))
        or (op is sre.AT and av in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY)) for op, av in _walk(parsed))


_UNICODE_CATEGORIES = (sre.CATEGORY_DIGIT, sre.CATEGORY_WORD, sre.CATEGORY_SPACE)


def _anchored(parsed: Any) -> bool:
    return any(op is sre.AT and av not in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY) for op, av in _walk(parsed))


def _walk(parsed: Any) -> Iterator[tuple[Any, Any]]:
    """Every (operator, argument) of a parsed pattern, nested ones included."""
    for op, av in parsed:
        yield op, av
        yield from (item for sub in _nested(av) for item in _walk(sub))


def _nested(value: Any) -> Iterator[Any]:
    if isinstance(value, sre_parse.SubPattern):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _nested(item)


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
        space = max(text.rfind(" ", max(0, position - EDGE), position),
                    text.rfind("\n", max(0, position - EDGE), position))
        return space if space >= 0 else max(0, position - EDGE)
    match = _SPACE.search(text, position, min(len(text), position + EDGE))
    return match.start() if match else min(len(text), position + EDGE)


def available() -> bool:
    return hyperscan is not None
