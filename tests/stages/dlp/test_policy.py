"""Policy files: validation with file:line, rule conditions, matching modes, custom detectors, and
how several files combine."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigErrors
from gateway.message import Envelope, Recipient
from gateway.stages.dlp.policy import Policies, load_policies
from gateway.stages.dlp.scanner import ScanRequest, ScanSummary, scan_message
from gateway.stages.dlp.verdict import Verdict, decide
from tests.stages.dlp import builders as b

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"
SSN = "219-45-6789"


def load(tmp_path: Path, **files: str) -> Policies:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return load_policies(tmp_path)


def verdict(policies: Policies, raw: bytes, sender: str = "doc@clinic.example",
            to: tuple[str, ...] = ("patient@example.org",)) -> Verdict:
    request = ScanRequest(policies.detectors, policies.subject_tags)
    envelope = Envelope(sender, tuple(Recipient(address) for address in to))
    return decide(policies, scan_message(raw, request), envelope)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load(tmp_path, bad=text)
    return [str(error) for error in caught.value.errors]


def test_shipped_policies_load() -> None:
    policies = load_policies(REPO_POLICIES)
    assert policies.files and all(f.rules for f in policies.files)


def test_shipped_policies_encrypt_phi_and_block_bulk_ssn() -> None:
    policies = load_policies(REPO_POLICIES)
    assert verdict(policies, b.message(f"SSN {SSN}")).action == "encrypt"
    bulk = "\n".join(f"SSN 2{i:02d}-45-6789" for i in range(12))
    assert verdict(policies, b.message(bulk)).action == "block"
    assert verdict(policies, b.message("Lunch on Friday?")).action == "allow"


def test_unknown_key_is_reported_at_its_line(tmp_path: Path) -> None:
    text = "match: first\nrules:\n  - name: a\n    action: encrypt\n    colour: red\n"
    assert errors_of(tmp_path, text) == [f"{tmp_path}/bad.yaml:5: rules[0].colour: unknown key "
                                         "(allowed here: action, name, notify, pool, protection, receipt, "
                                         "reply, severity, tag, when)"]


def test_unknown_detector_in_a_rule_is_an_error(tmp_path: Path) -> None:
    text = "match: first\nrules:\n  - name: a\n    action: block\n    when:\n      detectors: {sssn: 1}\n"
    [error] = errors_of(tmp_path, text)
    assert error.startswith(f"{tmp_path}/bad.yaml:6: rules[0].when.detectors: unknown detector 'sssn'")


def test_match_mode_must_be_stated(tmp_path: Path) -> None:
    [error] = errors_of(tmp_path, "rules: []\n")
    assert error.endswith("match: required key is missing")


def test_bad_action_and_bad_regex_are_errors(tmp_path: Path) -> None:
    text = ("match: first\ndetectors:\n  - {name: x, pattern: '[a-'}\n"
            "rules:\n  - {name: a, action: shred}\n")
    found = errors_of(tmp_path, text)
    assert any(":3: detectors[0].pattern: not a valid regular expression" in e for e in found)
    assert any(":5: rules[0].action: expected one of encrypt, block, hold" in e for e in found)


def test_notify_needs_an_address(tmp_path: Path) -> None:
    [error] = errors_of(tmp_path, "match: first\nrules:\n  - {name: a, action: notify}\n")
    assert "notifies, but the file has no notify_to" in error


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    [error] = errors_of(tmp_path, "match: first\nrules: [\n  - a: b\n")
    assert error.startswith(f"{tmp_path}/bad.yaml:") and "YAML syntax error" in error


def test_first_match_takes_the_first_rule(tmp_path: Path) -> None:
    policies = load(tmp_path, p="""
match: first
rules:
  - {name: tag-it, action: tag, when: {detectors: {ssn: 1}}}
  - {name: block-it, action: block, when: {detectors: {ssn: 1}}}
""")
    result = verdict(policies, b.message(f"SSN {SSN}"))
    assert (result.action, result.applied, result.matched) == ("tag", ("tag-it",), ("tag-it", "block-it"))
    assert result.headers == (("X-Mailward-DLP", "tag-it"),)


def test_highest_severity_takes_the_most_severe_rule(tmp_path: Path) -> None:
    policies = load(tmp_path, p="""
match: highest_severity
rules:
  - {name: tag-it, action: tag, when: {detectors: {ssn: 1}}}
  - {name: hold-it, action: hold, when: {detectors: {ssn: 1}}}
  - {name: loud-tag, action: tag, severity: 90, when: {detectors: {ssn: 1}}}
""")
    assert verdict(policies, b.message(f"SSN {SSN}")).applied == ("loud-tag",)


def test_counts_and_all_detectors(tmp_path: Path) -> None:
    policies = load(tmp_path, p="""
match: first
rules:
  - {name: many, action: block, when: {detectors: {ssn: 3}}}
  - {name: pair, action: hold, when: {all_detectors: {ssn: 1, dob: 1}}}
  - {name: total, action: encrypt, when: {min_total: 2}}
""")
    assert verdict(policies, b.message(f"SSN {SSN}\nSSN 219-45-6790\nSSN 219-45-6791")).action == "block"
    assert verdict(policies, b.message(f"SSN {SSN}, DOB: 03/04/1971")).action == "hold"
    assert verdict(policies, b.message(f"SSN {SSN} and SSN 219-45-6790")).action == "encrypt"
    assert verdict(policies, b.message(f"SSN {SSN}")).action == "allow"


def test_recipient_patterns_decide_per_recipient(tmp_path: Path) -> None:
    policies = load(tmp_path, p="""
match: first
rules:
  - {name: internal, action: allow, when: {recipients: ["*@clinic.example"]}}
  - {name: phi, action: encrypt, when: {detectors: {ssn: 1}}}
""")
    result = verdict(policies, b.message(f"SSN {SSN}"), to=("nurse@clinic.example", "patient@example.org"))
    assert result.protect == (1,) and result.recipient_actions == ("allow", "encrypt")


def test_sender_subject_tag_facts_and_types(tmp_path: Path) -> None:
    policies = load(tmp_path, p="""
match: first
rules:
  - {name: billing, action: hold, when: {senders: ["*@billing.example"]}}
  - {name: secure, action: encrypt, when: {subject_tags: ["[Secure]"]}}
  - {name: locked, action: hold, when: {facts: [encrypted_attachment]}}
  - {name: sheets, action: tag, when: {attachment_types: [".XLSX"]}}
""")
    assert verdict(policies, b.message("hi"), sender="a@billing.example").action == "hold"
    assert verdict(policies, b.message("hi", subject="[SECURE] results")).action == "encrypt"
    locked = b.message("hi", attachments=[("r.pdf", b.encrypted_pdf(["x"]), "application/pdf")])
    assert verdict(policies, locked).applied == ("locked",)
    sheet = b.message("hi", attachments=[("r.xlsx", b.xlsx([["a"]]), "application/octet-stream")])
    assert verdict(policies, sheet).applied == ("sheets",)


def test_strongest_action_wins_across_files(tmp_path: Path) -> None:
    policies = load(tmp_path, a="""
match: first
rules: [{name: permissive, action: allow}]
""", b="""
match: first
rules: [{name: strict, action: hold, when: {detectors: {ssn: 1}}}]
""")
    assert verdict(policies, b.message(f"SSN {SSN}")).action == "hold"
    assert verdict(policies, b.message("nothing")).action == "allow"


def test_custom_regex_detector_with_context_and_min_count(tmp_path: Path) -> None:
    policies = load(tmp_path, p=r"""
match: first
detectors:
  - {name: claim, pattern: 'CLM-\d{6}', context: [claim], window: 30, min_count: 2}
rules:
  - {name: claims, action: encrypt, when: {detectors: {claim: 1}}}
""")
    assert verdict(policies, b.message("claim CLM-123456 and claim CLM-654321")).action == "encrypt"
    assert verdict(policies, b.message("claim CLM-123456 only one")).action == "allow"
    assert verdict(policies, b.message("ref CLM-123456 ref CLM-654321")).action == "allow"  # no context


def test_custom_keyword_detector_and_validator(tmp_path: Path) -> None:
    policies = load(tmp_path, p=r"""
match: first
detectors:
  - {name: hiv, keywords: [hiv, viral load], context: [patient], window: 40}
  - {name: card_ref, pattern: '\b\d{16}\b', validator: luhn}
rules:
  - {name: sensitive, action: hold, when: {detectors: {hiv: 1}}}
  - {name: cards, action: encrypt, when: {detectors: {card_ref: 1}}}
""")
    assert verdict(policies, b.message("Patient viral   load is undetectable")).action == "hold"
    assert verdict(policies, b.message("Archive of the HIVE project")).action == "allow"
    assert verdict(policies, b.message("ref 4111111111111111")).action == "encrypt"
    assert verdict(policies, b.message("ref 4111111111111112")).action == "allow"


def test_scan_that_ran_out_of_time_is_decided_by_on_error(tmp_path: Path) -> None:
    policies = load(tmp_path, p="match: first\non_error: hold\nrules: [{name: t, action: tag}]\n")
    envelope = Envelope("a@b.example", (Recipient("c@d.example"),))
    result = decide(policies, ScanSummary(limits_hit=frozenset({"time"})), envelope)
    assert (result.action, result.error) == ("hold", "timeout")
