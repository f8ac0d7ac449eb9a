"""Precision and recall over labelled samples, shared by the DLP corpus tests and tools."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tally:
    """Counts of expected against found: per message (booleans, where true negatives count too)
    or per detector (how many findings a sample should have and has)."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0

    def add(self, expected: int, found: int) -> None:
        self.true_positives += min(expected, found)
        self.false_positives += max(0, found - expected)
        self.false_negatives += max(0, expected - found)
        self.true_negatives += not expected and not found

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0
