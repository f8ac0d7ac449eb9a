"""One scan of one message: extract its text, run every detector, summarise.

`scan_message` is a pure function of the message bytes and a `ScanRequest`, so it runs the same in
a scan worker process, in `mailward policy test`, and in tests. What it returns, `ScanSummary`,
holds counts, facts and locations only: the matched characters never leave this function.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from gateway.memory import release_freed
from gateway.stages.dlp import checksums
from gateway.stages.dlp.clinical import ClinicalContext, PrescriberNumbers, vocabulary
from gateway.stages.dlp.detectors import BUILT_IN, Detector, PatternDetector, scan
from gateway.stages.dlp.extract import ExtractLimits, extract
from gateway.stages.dlp.policy import CustomDetector
from gateway.stages.dlp.prefilter import EDGE, MARGIN, Prefilter, pattern_hint
from gateway.stages.dlp.prefilter import available as prefilter_available

CLINICAL = (ClinicalContext(), PrescriberNumbers())

MAX_LOCATIONS = 1000  # per scan; counts stay exact beyond it


@dataclass(frozen=True)
class ScanRequest:
    detectors: tuple[CustomDetector, ...] = ()
    subject_tags: tuple[str, ...] = ()  # lower-case
    limits: ExtractLimits = ExtractLimits()
    budget: float = 30.0  # seconds for extraction and detection together
    # What the budget is counted in: wall-clock time, or (a scan on the event loop, where only its
    # own work can make it overrun) the CPU time of the thread, which the scheduler or another
    # process busy on the same core does not eat into.
    clock: Literal["monotonic", "thread_time"] = "monotonic"


@dataclass(frozen=True)
class Location:
    detector: str
    source: str  # subject, header, body, attachment, filename
    part: int  # the n-th text extracted from the message
    start: int
    end: int


@dataclass(frozen=True)
class ScanSummary:
    counts: dict[str, int] = field(default_factory=dict)  # detector -> findings (only those found)
    locations: tuple[Location, ...] = ()
    facts: frozenset[str] = frozenset()
    limits_hit: frozenset[str] = frozenset()
    subject_tags: frozenset[str] = frozenset()
    attachments: int = 0
    attachment_types: frozenset[str] = frozenset()
    seconds: float = 0.0


def scan_message(raw: bytes, request: ScanRequest) -> ScanSummary:
    with _collector_paused():
        return _scan_message(raw, request)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during a scan. A scan of a large sheet or archive makes
    hundreds of thousands of small containers (match tuples, rows) that live until it ends; each
    collection they set off walks them and the detectors' vocabulary again (a third of the time of
    a 20,000-row sheet). What a scan leaves in cycles is collected after it, as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _scan_message(raw: bytes, request: ScanRequest) -> ScanSummary:
    started = time.monotonic()
    clock = time.thread_time if request.clock == "thread_time" else time.monotonic
    deadline = clock() + request.budget
    extracted = extract(raw, request.limits, deadline, clock=clock)
    detectors, minimums = build_detectors(request.detectors)
    hints = build_prefilter(request.detectors)
    counts: dict[str, int] = {}
    locations: list[Location] = []
    limits_hit = set(extracted.limits_hit)
    facts = set(extracted.facts)
    subject = ""
    for part, text in enumerate(extracted.texts):
        if text.source == "subject" and not subject:
            subject = text.text.lower()
        if clock() > deadline:
            limits_hit.add("time")
            facts.add("scan_incomplete")
            break
        for finding in scan(text.text, detectors, hints):
            counts[finding.detector] = counts.get(finding.detector, 0) + 1
            if len(locations) < MAX_LOCATIONS:
                locations.append(Location(finding.detector, text.source, part, finding.start, finding.end))
    for name, minimum in minimums.items():  # a custom detector's min_count: fewer is none
        if counts.get(name, 0) < minimum:
            counts.pop(name, None)
            locations = [location for location in locations if location.detector != name]
    return ScanSummary(
        counts=counts, locations=tuple(locations), facts=frozenset(facts),
        limits_hit=frozenset(limits_hit),
        subject_tags=frozenset(tag for tag in request.subject_tags if tag in subject),
        attachments=extracted.attachments, attachment_types=frozenset(extracted.attachment_types),
        seconds=time.monotonic() - started)


@functools.lru_cache(maxsize=8)
def build_detectors(custom: tuple[CustomDetector, ...]) -> tuple[tuple[Detector, ...], dict[str, int]]:
    """The built-in detectors (patterns and clinical context) plus the custom ones, compiled once
    per policy version."""
    built = [_build(spec) for spec in custom]
    minimums = {spec.name: spec.min_count for spec in custom if spec.min_count > 1}
    vocabulary()  # the names and conditions, loaded now rather than in the middle of a scan
    return (*BUILT_IN, *CLINICAL, *built), minimums


@functools.lru_cache(maxsize=8)
def build_prefilter(custom: tuple[CustomDetector, ...]) -> Prefilter | None:
    """The Hyperscan prefilter for `build_detectors(custom)`, or None without Hyperscan."""
    prefilter = Prefilter(build_detectors(custom)[0]) if prefilter_available() else None
    # Compiling takes about three times the database's memory; give the heap's free part back
    # (15 MB in each process that scans).
    release_freed()
    return prefilter


def _build(spec: CustomDetector) -> PatternDetector:
    flags = re.IGNORECASE if spec.ignore_case else 0
    if spec.pattern is not None:
        pattern = re.compile(spec.pattern, flags)
    else:  # whole words or phrases; any run of white space between the words of a phrase
        words = "|".join(r"\s+".join(re.escape(w) for w in keyword.split())
                         for keyword in sorted(spec.keywords, key=len, reverse=True))
        pattern = re.compile(rf"(?<!\w)(?:{words})(?!\w)", flags)
    validator = getattr(checksums, spec.validator) if spec.validator is not None else None
    # A keyword match holds the keyword's first word: without one in the text, skip the scan.
    required = tuple(keyword.split()[0].lower() for keyword in spec.keywords if keyword.split())
    # Keywords are their own hints for the prefilter, and so is a regular expression where that
    # is safe (else the detector looks at the whole text).
    if spec.pattern is not None:
        hints, plain_only = pattern_hint(pattern, spec.window)
    else:
        hints = tuple(r"\s+".join(re.escape(word) for word in keyword.split()) for keyword in spec.keywords)
        plain_only = False
        if max(map(len, hints), default=0) + spec.window > MARGIN - EDGE:  # a slice could cut its context
            hints = ()
    return PatternDetector(spec.name, pattern, validator, tuple(w.lower() for w in spec.context),
                           window=spec.window, keep_separators=validator is None, required=required,
                           hints=hints, caseless=spec.ignore_case, hints_plain_only=plain_only,
                           hints_alone=spec.pattern is not None)
