"""PHI detectors: a pattern finds candidates, a validator (check digit, structure) and, where the
shape alone is too common, context words nearby decide what counts.

A `Finding` is a detector name and a location in the scanned text; the matched characters are
never copied out of it, so what leaves this module (logs, metrics, audit, `policy test`) can only
be counts and positions. Built-in detectors and the custom ones from policy YAML are the same
`PatternDetector` class.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.stages.dlp import checksums
from gateway.stages.dlp.prefilter import Prefilter

Validator = Callable[[str], bool]


@dataclass(frozen=True)
class Finding:
    detector: str
    start: int
    end: int


class Detector(Protocol):
    """What `scan` runs: a pattern detector, or the clinical context detector (`clinical`)."""

    @property
    def name(self) -> str: ...
    @property
    def digit_run(self) -> int: ...
    @property
    def hints(self) -> tuple[str, ...]: ...
    @property
    def caseless(self) -> bool: ...
    @property
    def hints_plain_only(self) -> bool: ...
    @property
    def hints_alone(self) -> bool: ...

    def can_match(self, lowered: str) -> bool: ...
    def find(self, text: str, lowered: str | None = None) -> list[Finding]: ...


@dataclass(frozen=True)
class PatternDetector:
    """Candidates from `pattern` (group `group` is the value), kept when `validator` accepts the
    value (separators removed unless `keep_separators`) and, if `context` is set, when one of
    those words occurs within `window` characters: always, or only for matches for which
    `context_only_if` is true. A word of `exclude` right before a match (within
    `exclude_window` characters) labels it as something else ("Order #123456789") and drops it."""

    name: str
    pattern: re.Pattern[str]
    validator: Validator | None = None
    context: tuple[str, ...] = ()
    window: int = 60
    group: int = 0
    context_only_if: Callable[[re.Match[str]], bool] | None = None  # None: context always needed
    keep_separators: bool = False
    exclude: tuple[str, ...] = ()
    exclude_window: int = 16
    # Every match holds a run of this many digits (single separators allowed between them), so
    # `scan` may look near such runs only; 0: the detector runs over the whole text.
    digit_run: int = 0
    # Lower-case words one of which any match holds (a label the pattern starts with, a keyword);
    # when none occurs in the text, the detector is skipped. Context words that every match needs
    # are a second such condition, added on their own.
    required: tuple[str, ...] = ()
    # Hyperscan expressions of which every match holds one (see `prefilter`): the detector then
    # looks only near them. () for none: it looks everywhere (digit runs, `required` words).
    hints: tuple[str, ...] = ()
    caseless: bool = False  # the hints match in any case
    # The hints miss matches in text that is not `prefilter.plain` (a custom pattern's Unicode
    # classes): the prefilter gives such text whole.
    hints_plain_only: bool = False
    hints_alone: bool = False  # a Hyperscan database of their own (see `Prefilter`)
    _context_re: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)
    _exclude_re: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)
    _gates: tuple[tuple[str, ...], ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        assert self.digit_run != 1, "digit runs start at two digits; use 0 (the whole text)"
        object.__setattr__(self, "_context_re", _words(self.context))
        object.__setattr__(self, "_exclude_re", _words(self.exclude))
        gates = [self.required] if self.required else []
        if self.context and self.context_only_if is None:
            gates.append(self.context)
        object.__setattr__(self, "_gates", tuple(gates))

    def can_match(self, lowered: str) -> bool:
        """False when `lowered` (lower case) lacks all the words of a kind every match needs."""
        return all(any(map(lowered.__contains__, words)) for words in self._gates)

    def find(self, text: str, lowered: str | None = None) -> list[Finding]:
        """Findings in `text`; pass `lowered` (text.lower()) when scanning with many detectors."""
        found = []
        for match in self.pattern.finditer(text):
            start, end = match.span(self.group)
            value = match.group(self.group)
            if not self.keep_separators:
                value = _SEPARATORS.sub("", value)
            if self.validator is not None and not self.validator(value):
                continue
            needs_context = self._context_re is not None and (
                self.context_only_if is None or self.context_only_if(match))
            if needs_context or self._exclude_re is not None:
                if lowered is None:
                    lowered = text.lower()
                if needs_context and not self._has_context(lowered, start, end):
                    continue
                if self._exclude_re is not None and self._exclude_re.search(
                        lowered, max(0, start - self.exclude_window), start):
                    continue
            found.append(Finding(self.name, start, end))
        return found

    def _has_context(self, lowered: str, start: int, end: int) -> bool:
        assert self._context_re is not None
        return self._context_re.search(lowered, max(0, start - self.window),
                                       min(len(lowered), end + self.window)) is not None


def _words(words: tuple[str, ...]) -> re.Pattern[str] | None:
    """Any of `words` (lower case) as whole words."""
    if not words:
        return None
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])")


_SEPARATORS = re.compile(r"[\s.\-/]")
_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DATE = (rf"(?:\d{{1,2}}[/\-.]\d{{1,2}}[/\-.](?:\d{{4}}|\d{{2}})|\d{{4}}-\d{{2}}-\d{{2}}"
         rf"|(?:{_MONTHS})[a-z]*\.?\s+\d{{1,2}},?\s+\d{{4}}|\d{{1,2}}\s+(?:{_MONTHS})[a-z]*\.?,?\s+\d{{4}}"
         rf"|\d{{1,2}}[\-/ ](?:{_MONTHS})[a-z]*\.?[\-/ ](?:\d{{4}}|\d{{2}}))")  # 06-Aug-1949, 6 Aug 49


def _valid_date(value: str) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", value)]
    if len(numbers) == 3 and not re.search(r"[a-z]", value, re.IGNORECASE):
        year_first = numbers[0] > 31
        month, day = (numbers[1], numbers[2]) if year_first else (numbers[0], numbers[1])
        if not year_first and month > 12:  # day/month order
            month, day = day, month
        return 1 <= month <= 12 and 1 <= day <= 31
    return True


# Labels of numbers that are not SSNs; seen right before a 9-digit number they say what it is.
_OTHER_NUMBERS = ("order", "order #", "order no", "invoice", "ref", "reference", "tracking", "transit", "aba",
                  "routing", "confirmation", "ticket", "po", "phone", "tel", "fax", "zip", "account",
                  "acct", "claim", "npi", "mrn", "member id", "policy")


def _bare(match: re.Match[str]) -> bool:
    """An SSN written without separators needs context; 123-45-6789 does not."""
    return not match.group("sep")


# Each states the digit run its matches hold (see `scan`): without the prefilter they look only
# near such runs; icd10 and mrn, whose matches may hold single digits, scan the whole text, but
# only when their words occur in it. Each also states its hints for the prefilter.
BUILT_IN: tuple[PatternDetector, ...] = (
    PatternDetector(
        "ssn", re.compile(r"(?<![\d\-])\d{3}(?P<sep>[\- ]?)\d{2}(?P=sep)\d{4}(?![\d\-])"),
        checksums.ssn, ("ssn", "ssn#", "ss#", "ss #", "ss no", "s.s.n", "social security", "soc sec",
                        "soc. sec", "social sec", "ssa"),
        context_only_if=_bare, exclude=_OTHER_NUMBERS, digit_run=9,
        hints=(r"\d{3}[\- ]?\d{2}[\- ]?\d{4}",)),
    PatternDetector(
        "npi", re.compile(r"(?<![\d\-])[12]\d{9}(?![\d\-])"), checksums.npi,
        ("npi", "national provider", "provider id", "provider number", "prescriber"), digit_run=10,
        hints=(r"[12]\d{9}",)),
    PatternDetector(
        "dea", re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z9]\d{7}(?![A-Za-z0-9])"), checksums.dea,
        ("dea", "registration", "prescriber", "controlled substance"), digit_run=7,
        hints=(r"[A-Za-z][A-Za-z9]\d{7}",)),
    PatternDetector(
        "medicare_mbi",
        re.compile(r"(?<![A-Za-z0-9])[1-9][A-Za-z][A-Za-z0-9]\d-?[A-Za-z][A-Za-z0-9]\d-?[A-Za-z]{2}\d{2}"
                   r"(?![A-Za-z0-9])"), checksums.mbi, digit_run=2,
        hints=(r"\d-?[A-Za-z][A-Za-z0-9]\d-?[A-Za-z]{2}\d{2}",)),
    PatternDetector(
        "payment_card", re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])"), checksums.payment_card,
        digit_run=13, hints=(r"\d(?:[ \-]?\d){12,18}",)),
    PatternDetector(
        "aba_routing", re.compile(r"(?<![\d\-])\d{9}(?![\d\-])"), checksums.aba_routing,
        ("routing", "aba", "rtn", "transit", "wire", "ach"), window=40, digit_run=9, hints=(r"\d{9}",)),
    PatternDetector(
        "bank_account",
        re.compile(r"(?i)\b(?:account|acct)\.?(?:\s*(?:number|no\.?|#))?\s*[:#]?\s*(\d{4,17})\b"),
        group=1, required=("account", "acct"), digit_run=4, hints=("account", "acct"), caseless=True),
    PatternDetector(
        "icd10",
        re.compile(r"(?<![A-Za-z0-9.])[A-TV-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?(?![A-Za-z0-9])"), None,
        ("diagnosis", "diagnoses", "diagnosed", "dx", "icd", "icd-10", "icd10", "assessment",
         "condition", "problem list", "impression"), window=80, hints=(r"[A-TV-Z]\d[0-9A-Z]",)),
    PatternDetector(
        "mrn",
        # The labels hospitals use: MRN, MR#, MR No., Med Rec No., Med. Rec. #, Medical Record
        # Number, Patient ID, Chart #; the value with digits, dashes, a letter prefix.
        re.compile(r"(?i)\b(?:mrn|mr\s?(?:#|no\b\.?)|med\.?\s*rec\.?(?:\s*(?:number|no\b\.?|#))?|"
                   r"medical\s+record(?:\s+(?:number|no\b\.?|#))?|patient\s+id|chart\s*(?:number|no\b\.?|#))"
                   r"\s*[:#]?\s*([A-Z0-9][A-Z0-9\-]{4,16})\b"),
        lambda value: sum(c.isdigit() for c in value) >= 4, group=1,
        required=("mrn", "mr", "med", "medical record", "patient id", "chart"),
        hints=(r"mrn|mr\s?(?:#|no)|med\.?\s*rec|medical\s+record|patient\s+id|chart\s*(?:number|no|#)",),
        caseless=True),
    PatternDetector(
        "dob",
        re.compile(rf"(?i)(?:\b(?:dob|d\.o\.b\.?|date of birth|birth\s?date|born(?:\s+on)?)|(?<![\w.])b\.)"
                   rf"\s*[:\-]*\s*({_DATE})"),
        _valid_date, group=1, keep_separators=True, required=("dob", "d.o.b", "birth", "born", "b."),
        digit_run=2, hints=(r"dob|d\.o\.b|date of birth|birth\s?date|born|b\.",), caseless=True),
)


# Detectors whose matches hold a run of digits run only on slices of the text around such runs,
# _MARGIN characters on each side (more than any context window or label length). Most text is
# words, not numbers, and most numbers are short: the slices are a small part of it.
_MARGIN = 160
_DIGIT_RUN = re.compile(r"\d(?:[ \-./]?\d)+")  # two digits or more: every `digit_run` is


def scan(text: str, detectors: tuple[Detector, ...] = BUILT_IN,
         prefilter: Prefilter | None = None) -> list[Finding]:
    """Every finding of every detector in `text`; with a `prefilter` (compiled for these
    detectors), the hinted detectors look only at the slices around their hints."""
    slices = prefilter.slices(text) if prefilter is not None else None
    if slices is not None:
        found: list[Finding] = []
        for index, parts in slices.items():
            detector = detectors[index]
            for start, end in parts:
                window = text[start:end]
                lowered = window.lower()
                if detector.can_match(lowered):
                    found += [Finding(f.detector, f.start + start, f.end + start)
                              for f in detector.find(window, lowered)]
        rest = tuple(d for i, d in enumerate(detectors) if i not in prefilter.hinted)  # type: ignore[union-attr]
        return found + (_scan_all(text, rest) if rest else [])
    return _scan_all(text, detectors)


def _scan_all(text: str, detectors: tuple[Detector, ...]) -> list[Finding]:
    """Without hints: detectors of digit runs near such runs, the others over the whole text."""
    found: list[Finding] = []
    by_run: dict[int, list[Detector]] = {}
    for detector in detectors:
        by_run.setdefault(detector.digit_run, []).append(detector)
    runs = _digit_runs(text) if any(by_run) else []
    longest = max((digits for _, _, digits in runs), default=0)
    lowered_text: str | None = None
    for run, group in sorted(by_run.items()):
        if run > longest:
            continue  # no run of digits long enough for these detectors' matches
        for start, end in _windows(runs, run, len(text)):
            if (start, end) == (0, len(text)):
                window = text
                lowered = lowered_text = lowered_text if lowered_text is not None else text.lower()
            else:
                window = text[start:end]
                lowered = window.lower()
            for detector in group:
                if detector.can_match(lowered):
                    found += [Finding(f.detector, f.start + start, f.end + start)
                              for f in detector.find(window, lowered)]
    return found


def _digit_runs(text: str) -> list[tuple[int, int, int]]:
    """(start, end, digits) of every maximal run of two or more digits with single separators
    between them."""
    runs = []
    for match in _DIGIT_RUN.finditer(text):
        start, end = match.span()
        value = match.group()
        runs.append((start, end, end - start - value.count(" ") - value.count("-")
                     - value.count(".") - value.count("/")))
    return runs


def _windows(runs: list[tuple[int, int, int]], run: int, size: int) -> list[tuple[int, int]]:
    """Disjoint slices of the text that hold every run of at least `run` digits with `_MARGIN`
    characters around it (the whole text for 0). A slice's edges are never inside a run."""
    if run == 0:
        return [(0, size)]
    windows: list[tuple[int, int]] = []
    for run_start, run_end, digits in runs:
        if digits < run:
            continue
        start, end = max(0, run_start - _MARGIN), min(size, run_end + _MARGIN)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows
