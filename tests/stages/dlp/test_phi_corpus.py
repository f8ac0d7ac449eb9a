"""The product's decision per message on the generated corpus (tests/data/phi): in `protect:
sensitive` mode, with the shipped policy, is a message kept from leaving in clear exactly when it
carries PHI? Scored on the held-out part, whose phrasing and name locales the rules were not tuned
on; `python -m tests.data.phi.evaluate heldout` prints the full table."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.stages.dlp import clinical, prefilter
from gateway.stages.dlp.detectors import scan
from gateway.stages.dlp.extract import extract
from gateway.stages.dlp.scanner import build_detectors, build_prefilter
from tests.data.phi.evaluate import Report, evaluate, sensitive_policies, table
from tests.data.phi.generate import CATEGORIES, PLACEMENTS, corpus

MIN_RECALL, MIN_PRECISION, MIN_CATEGORY_RECALL = 0.97, 0.97, 0.90


@pytest.fixture(scope="module")
def heldout() -> Report:
    return evaluate(corpus(), "heldout")


def test_the_corpus_is_large_varied_and_labelled_per_message() -> None:
    samples = corpus()
    assert len(samples) >= 1000
    assert {s.placement for s in samples} == set(PLACEMENTS)
    assert {c for s in samples for c in s.categories} == set(CATEGORIES)
    assert sum(not s.phi for s in samples) >= 300  # hard negatives
    assert {s.part for s in samples} == {"tuning", "heldout"}


def test_precision_and_recall_on_the_held_out_part(heldout: Report) -> None:
    assert heldout.overall.recall >= MIN_RECALL, table(heldout)
    assert heldout.overall.precision >= MIN_PRECISION, table(heldout)


@pytest.mark.parametrize("category", CATEGORIES)
def test_recall_per_category_on_the_held_out_part(heldout: Report, category: str) -> None:
    assert heldout.categories[category].recall >= MIN_CATEGORY_RECALL, table(heldout)


def test_the_condition_vocabulary_matches_the_installed_icd10cm_release(tmp_path: Path) -> None:
    shipped = Path(clinical.__file__).with_name(clinical.CONDITIONS_FILE).read_text()
    clinical.write_conditions(tmp_path / "conditions.txt")
    assert (tmp_path / "conditions.txt").read_text() == shipped, \
        "run: python -m gateway.stages.dlp.clinical (the ICD-10-CM package was updated)"


def test_the_prefilter_finds_what_a_scan_of_the_whole_text_finds() -> None:
    """The Hyperscan prefilter only decides where to look: the findings must be the same, for the
    built-in detectors and the shipped policy's own (a pattern and keywords)."""
    assert prefilter.available(), "hyperscan is a dependency on x86-64"
    custom = sensitive_policies().detectors
    detectors, _ = build_detectors(custom)
    hints = build_prefilter(custom)
    assert all(detector.hints for detector in detectors[-len(custom):]), "each holds its own hints"
    differ = []
    for sample in corpus()[::4]:
        for text in extract(sample.raw).texts:
            with_hints = sorted((f.detector, f.start, f.end) for f in scan(text.text, detectors, hints))
            everywhere = sorted((f.detector, f.start, f.end) for f in scan(text.text, detectors))
            if with_hints != everywhere:
                differ.append(f"{sample.name} {text.source}: {set(with_hints) ^ set(everywhere)}")
    assert differ == []
