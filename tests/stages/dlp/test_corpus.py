"""Precision and recall of the built-in detectors on the labelled corpus in tests/data/dlp
(see its generate.py): every detector, every placement, with hard negatives around."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.stages.dlp.clinical import NAMES as CLINICAL_NAMES
from gateway.stages.dlp.scanner import ScanRequest, scan_message
from tests.scoring import Tally

DATA = Path(__file__).resolve().parents[2] / "data" / "dlp"
MIN_RECALL, MIN_PRECISION = 0.98, 0.95


def evaluate() -> tuple[dict[str, Tally], Tally, list[str]]:
    labels: dict[str, dict[str, int]] = json.loads((DATA / "labels.json").read_text())
    per_detector: dict[str, Tally] = {}
    overall = Tally()
    mistakes = []
    for filename, expected in sorted(labels.items()):
        counts = scan_message((DATA / "corpus" / filename).read_bytes(), ScanRequest()).counts
        # This corpus labels the pattern detectors; the clinical context ones are scored per
        # message by tests/stages/dlp/test_phi_corpus.py.
        counts = {name: count for name, count in counts.items() if name not in CLINICAL_NAMES}
        for detector in sorted(set(expected) | set(counts)):
            want, got = expected.get(detector, 0), counts.get(detector, 0)
            per_detector.setdefault(detector, Tally()).add(want, got)
            overall.add(want, got)
            if want != got:
                mistakes.append(f"{filename}: {detector} expected {want}, found {got}")
    return per_detector, overall, mistakes


@pytest.fixture(scope="module")
def results() -> tuple[dict[str, Tally], Tally, list[str]]:
    return evaluate()


def test_corpus_covers_every_detector_and_has_negatives() -> None:
    labels = json.loads((DATA / "labels.json").read_text())
    assert len(labels) >= 200
    covered = {detector for expected in labels.values() for detector in expected}
    assert covered == {"ssn", "npi", "dea", "medicare_mbi", "payment_card", "aba_routing", "bank_account",
                       "icd10", "mrn", "dob"}
    assert sum(1 for expected in labels.values() if not expected) >= 50


def test_recall_and_precision_per_detector(results: tuple[dict[str, Tally], Tally, list[str]]) -> None:
    per_detector, _, mistakes = results
    report = "\n".join(f"{name:14} precision {t.precision:.3f} recall {t.recall:.3f}"
                       for name, t in sorted(per_detector.items()))
    print("\n" + report)  # shown with `pytest -s`, and in the failure message below
    weak = [name for name, t in per_detector.items() if t.recall < MIN_RECALL or t.precision < MIN_PRECISION]
    assert not weak, report + "\n" + "\n".join(mistakes[:30])


def test_recall_and_precision_overall(results: tuple[dict[str, Tally], Tally, list[str]]) -> None:
    _, overall, mistakes = results
    print(f"\noverall        precision {overall.precision:.3f} recall {overall.recall:.3f}")
    assert overall.recall >= MIN_RECALL and overall.precision >= MIN_PRECISION, "\n".join(mistakes[:30])
