"""Score the shipped policy in `protect: sensitive` mode on the generated corpus: per message,
is it kept from leaving in clear (protected, held or blocked) exactly when it carries PHI?

    .venv/bin/python -m tests.data.phi.evaluate [tuning|heldout] [--misses]
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gateway.message import Envelope, Recipient
from gateway.policies import builtin_directory
from gateway.stages.dlp.policy import Policies, load_policies
from gateway.stages.dlp.scanner import ScanRequest, scan_message
from gateway.stages.dlp.verdict import decide
from tests.data.phi.generate import Sample, corpus
from tests.scoring import Tally


@dataclass
class Report:
    overall: Tally = field(default_factory=Tally)
    categories: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    placements: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    misses: list[str] = field(default_factory=list)


def sensitive_policies() -> Policies:
    """The shipped policy with `protect: sensitive`: detection decides everything."""
    text = (builtin_directory() / "healthcare.yaml").read_text()
    assert "\nprotect: all\n" in text
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "healthcare.yaml").write_text(text.replace("\nprotect: all\n", "\nprotect: sensitive\n"))
        return load_policies(Path(directory))


def predicted(policies: Policies, request: ScanRequest, sample: Sample) -> bool:
    envelope = Envelope("nurse.line@hospital.example", (Recipient("care.team@clinic.example"),))
    verdict = decide(policies, scan_message(sample.raw, request), envelope)
    return bool(verdict.protect) or verdict.action in ("block", "hold")


def evaluate(samples: list[Sample], part: str) -> Report:
    policies = sensitive_policies()
    request = ScanRequest(policies.detectors, policies.subject_tags)
    report = Report()
    for sample in samples:
        if sample.part != part:
            continue
        guess = predicted(policies, request, sample)
        report.overall.add(sample.phi, guess)
        report.placements[sample.placement].add(sample.phi, guess)
        for category in sample.categories or ("negative",):
            report.categories[category].add(sample.phi, guess)
        if guess != sample.phi:
            report.misses.append(f"{sample.name} {'missed' if sample.phi else 'false alarm'} "
                                 f"{','.join(sample.categories)}")
    return report


def table(report: Report) -> str:
    lines = [f"overall      precision {report.overall.precision:.3f}  recall {report.overall.recall:.3f}"]
    for name, score in sorted(report.categories.items()):
        lines.append(f"  {name:11}  recall {score.recall:.3f}  ({score.true_positives + score.false_negatives}"
                     f" messages)" if name != "negative" else
                     f"  {name:11}  false alarms {score.false_positives} of {score.false_positives + score.true_negatives}")
    for name, score in sorted(report.placements.items()):
        lines.append(f"  {name:11}  precision {score.precision:.3f}  recall {score.recall:.3f}")
    return "\n".join(lines)


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "heldout"
    report = evaluate(corpus(), part)
    print(table(report))
    if "--misses" in sys.argv:
        print("\n".join(report.misses))


if __name__ == "__main__":
    main()
