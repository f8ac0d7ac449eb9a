"""Detectors on text: validated identifiers found, look-alikes left alone, values never returned."""

from __future__ import annotations

import pytest

from gateway.stages.dlp.detectors import BUILT_IN, Detector, Finding, scan
from gateway.stages.dlp.policy import CustomDetector
from gateway.stages.dlp.prefilter import Prefilter
from gateway.stages.dlp.scanner import build_detectors


def names(text: str) -> list[str]:
    return sorted(f.detector for f in scan(text))


@pytest.mark.parametrize(("text", "expected"), [
    ("Patient SSN 123-45-6789 on file", ["ssn"]),
    ("ssn: 123456789", ["ssn"]),
    ("SS# 123 45 6789", ["ssn"]),
    ("Referring NPI 1234567893.", ["npi"]),
    ("Prescriber DEA AB1234563", ["dea"]),
    ("Medicare ID 1EG4-TE5-MK73", ["medicare_mbi"]),
    ("Card 4111 1111 1111 1111 exp 12/29", ["payment_card"]),
    ("Routing number 021000021, account no. 123456789012", ["aba_routing", "bank_account"]),
    ("Diagnosis: E11.9 type 2 diabetes", ["icd10"]),
    ("MRN: A1234567", ["mrn"]),
    ("DOB 03/14/1962", ["dob"]),
    ("Date of birth: March 14, 1962", ["dob"]),
])
def test_each_detector_finds_its_identifier(text: str, expected: list[str]) -> None:
    assert names(text) == expected


@pytest.mark.parametrize("text", [
    "Order 123456789 shipped",  # nine digits, no SSN context
    "Call 212-555-0147 or 2125550147",  # phone numbers
    "SSN 000-12-3456 and 666-12-3456 and 912-34-5678",  # never-issued areas
    "Invoice 1234567890 total",  # NPI-shaped without a valid check digit or context
    "Card 4111 1111 1111 1112",  # Luhn fails
    "Tracking AB1234567",  # DEA-shaped, wrong checksum, no context
    "Room E11 on floor 9",  # ICD-shaped outside clinical text
    "Version 2.5.1 released 2024-03-01",
    "DOB 13/45/1962",  # not a date
])
def test_look_alikes_are_not_findings(text: str) -> None:
    assert names(text) == []


def test_findings_are_locations_not_values() -> None:
    text = "SSN 123-45-6789"
    (finding,) = scan(text)
    assert finding == Finding("ssn", 4, 15)
    assert not hasattr(finding, "value")


def test_every_built_in_detector_has_a_unique_name() -> None:
    assert len({d.name for d in BUILT_IN}) == len(BUILT_IN)


def test_scan_finds_numbers_anywhere_in_long_text_with_their_context() -> None:
    prose = "the visit went well and the plan continues " * 40  # far more than any window
    text = ("SSN 219456789 " + prose + "card 4111 1111 1111 1111 " + prose + "DOB: 1/2/70 "
            + prose + "diagnosis E11.9 " + prose + "routing 021000021")
    found = sorted(f.detector for f in scan(text))
    assert found == ["aba_routing", "dob", "icd10", "payment_card", "ssn"]
    for finding in scan(text):
        assert any(ch.isdigit() for ch in text[finding.start:finding.end])


def custom(pattern: str, window: int = 40) -> tuple[tuple[Detector, ...], Prefilter]:
    """The detectors with the custom one "member" last, and their prefilter."""
    spec = CustomDetector("member", pattern=pattern, context=("member",), window=window, ignore_case=False)
    detectors, _ = build_detectors((spec,))
    return detectors, Prefilter(detectors)


def members(text: str, detectors: tuple[Detector, ...], hints: Prefilter) -> int:
    return sum(f.detector == "member" for f in scan(text, detectors, hints))


def test_a_custom_pattern_is_its_own_hint_lookarounds_and_all() -> None:
    """A custom pattern goes through the prefilter like a built-in detector (Hyperscan's
    prefilter mode stands in for the lookbehind it cannot run): in a long text the detector
    reads slices, not the whole, and still finds the one id with its context word."""
    detectors, hints = custom(r"(?<![A-Z])[A-Z]{3}\d{9}\b")
    assert detectors[-1].hints
    assert [len(detectors) - 1] in [owner for _, owner in hints.databases], "a database of its own"
    text = "plain words without numbers " * 20_000 + "member XYZ123456789 " + "more words " * 1000
    slices = hints.slices(text)
    assert slices is not None and sum(end - start for start, end in slices[len(detectors) - 1]) < 1000
    assert members(text, detectors, hints) == 1
    assert members(text.replace("XYZ", "XYz"), detectors, hints) == 0


@pytest.mark.parametrize("pattern", [r"^[A-Z]{3}\d{9}", r"[A-Z]{3}\d{9}$", r"\A\d{9}", r"member.{0,400}\d{9}",
                                     r"[A-Z]{,3}\d{9}", r"Mitgliedsnr\.?\s*ä?\d{9}"])
def test_a_custom_pattern_that_a_slice_would_change_reads_the_whole_text(pattern: str) -> None:
    """Anchored to the text's start or end, wider than a slice, or written in syntax the two
    engines read differently: no hint, the whole text."""
    detectors, _ = custom(pattern)
    assert detectors[-1].hints == ()


def test_a_wide_context_window_reads_the_whole_text() -> None:
    detectors, _ = custom(r"[A-Z]{3}\d{9}", window=400)
    assert detectors[-1].hints == ()


def test_a_unicode_class_in_a_custom_pattern_sees_letters_beyond_ascii() -> None:
    """Python's \\w is Unicode and Hyperscan's ASCII: in text with such letters the detector
    reads the whole text, and finds what the hint alone would have missed."""
    detectors, hints = custom(r"\b\w{3}\d{9}\b")
    assert detectors[-1].hints_plain_only
    text = "filler " * 5000 + "member ÉÀÜ123456789 here"
    assert members(text, detectors, hints) == 1
    assert members(text.replace("ÉÀÜ", "EAU"), detectors, hints) == 1
