"""`protect: all` (the shipped default) and `protect: sensitive`: which recipients need
protection and why, the `phi` answer that is the same in both modes, the built-in policy shipped
in the package, and check-config's warnings about a policy that protects nothing."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import load_config
from gateway.policies import builtin_directory
from gateway.stages.dlp.policy import load_policies
from gateway.stages.dlp.stage import dlp_settings
from tests.stages.dlp import builders as b
from tests.stages.dlp.test_policy import SSN, load, verdict
from tests.test_cli import mailward

RULES = """
rules:
  - {name: phi, action: encrypt, when: {detectors: {ssn: 1}}}
  - {name: partner, action: allow, when: {recipients: ["*@partner.example"]}}
"""


def test_protect_all_protects_a_message_no_rule_found_anything_in(tmp_path: Path) -> None:
    policies = load(tmp_path, p=f"match: first\nprotect: all\n{RULES}")
    decided = verdict(policies, b.message("Lunch on Friday?"), to=("pat@example.org", "x@partner.example"))
    assert decided.protect == (0,) and not decided.phi
    assert decided.protection_reasons[0].startswith("protect: all in p.yaml")
    assert decided.protection_reasons[1] == "rule partner: allow"


def test_protect_all_is_the_default_mode(tmp_path: Path) -> None:
    policies = load(tmp_path, p=f"match: first\n{RULES}")
    assert verdict(policies, b.message("Lunch on Friday?")).protect == (0,)


def test_protect_sensitive_protects_only_what_a_rule_found(tmp_path: Path) -> None:
    policies = load(tmp_path, p=f"match: first\nprotect: sensitive\n{RULES}")
    plain = verdict(policies, b.message("Lunch on Friday?"))
    assert plain.protect == () and not plain.phi
    assert "protect: sensitive" in plain.protection_reasons[0]
    found = verdict(policies, b.message(f"SSN {SSN}"))
    assert found.protect == (0,) and found.phi and found.protection_reasons[0] == "rule phi: encrypt"


def test_phi_is_the_same_answer_in_both_modes(tmp_path: Path) -> None:
    for mode in ("all", "sensitive"):
        (tmp_path / mode).mkdir()
        policies = load(tmp_path / mode, p=f"match: first\nprotect: {mode}\n{RULES}")
        assert verdict(policies, b.message(f"SSN {SSN}")).phi
        assert not verdict(policies, b.message("Lunch on Friday?")).phi


def test_the_built_in_policy_ships_in_the_package_and_is_the_default(tmp_path: Path) -> None:
    assert (builtin_directory() / "healthcare.yaml").is_file()
    config_file = tmp_path / "mailward.yaml"
    config_file.write_text("hostname: mx.example.com\n")  # no policies_dir
    policies = dlp_settings(load_config(config_file)).policies
    assert [f.protect for f in policies.files] == ["all"] and policies.files[0].rules
    assert load_policies(builtin_directory()) == policies


def test_check_config_warns_about_a_policy_that_protects_nothing_and_the_placeholder(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\nnotify_to: compliance@example.com\n"
        "rules: [{name: tag-ssn, action: tag, notify: true, when: {detectors: {ssn: 1}}}]\n")
    config = tmp_path / "mailward.yaml"
    config.write_text("policies_dir: policies\n")
    result = mailward(config, "check-config")
    assert result.returncode == 0
    assert "protects NOTHING" in result.stderr
    assert "placeholder compliance@example.com" in result.stderr
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text("hostname: mx.example.com\n")
    default = mailward(shipped, "check-config")
    assert "protects NOTHING" not in default.stderr and "placeholder" in default.stderr


def test_policy_test_says_which_mode_decided_and_why(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("hostname: mx.example.com\n")  # the built-in policy
    eml = tmp_path / "x.eml"
    eml.write_bytes(b"From: a@clinic.example\r\nTo: b@example.org\r\nSubject: lunch\r\n\r\nFriday?\r\n")
    text = mailward(config, "policy", "test", str(eml))
    assert "protect: all (healthcare.yaml)" in text.stdout and "why: protect: all" in text.stdout
    found = json.loads(mailward(config, "policy", "test", str(eml), "--json").stdout)
    assert found["phi"] is False and found["recipients"][0]["protection"]["required"] is True
    eml.write_bytes(b"From: a@clinic.example\r\nTo: b@example.org\r\nSubject: x\r\n\r\nSSN "
                    + SSN.encode() + b"\r\n")
    assert json.loads(mailward(config, "policy", "test", str(eml), "--json").stdout)["phi"] is True
