"""`mailward policy test` and `mailward check-config` on policies, run as the admin runs them."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from tests.conftest import write_config
from tests.crypto.keys import smime_identity
from tests.stages.dlp import builders as b
from tests.test_cli import mailward

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"
SSN = "219-45-6789"


def config_with(tmp_path: Path, policies: Path) -> Path:
    return write_config(tmp_path, {"policies_dir": str(policies)})


def test_policy_test_reports_rules_counts_action_and_protection(tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(b.message(f"SSN {SSN}\nDOB: 02/03/1960", subject="intake",
                              attachments=[("r.pdf", b.pdf([f"SSN {SSN}"]), "application/pdf")]))
    result = mailward(config_with(tmp_path, REPO_POLICIES), "policy", "test", str(eml), "--json",
                      "--from", "dr@clinic.example", "--to", "a@example.org", "--to", "b@example.net")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["action"] == "encrypt" and report["rules"]["applied"] == ["phi-identifiers"]
    assert report["detectors"]["ssn"] == {"count": 2, "where": {"body": 1, "attachment": 1}}
    assert [r["protection"]["required"] for r in report["recipients"]] == [True, True]
    assert [step["method"] for step in report["recipients"][0]["protection"]["order"]] == \
        ["tls", "smime", "pgp", "portal"]
    assert SSN not in result.stdout and "219456789" not in result.stdout


def test_policy_test_text_form_takes_addresses_from_headers(tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: dr@clinic.example\nTo: p@example.org\nSubject: hi\n\nLunch?\n")
    result = mailward(config_with(tmp_path, REPO_POLICIES), "policy", "test", str(eml))
    assert result.returncode == 0, result.stderr
    assert "action:      allow" in result.stdout
    assert "sender:      <dr@clinic.example>" in result.stdout and "p@example.org: allow" in result.stdout


def test_policy_test_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = mailward(config_with(tmp_path, REPO_POLICIES), "policy", "test", str(tmp_path / "nope.eml"))
    assert result.returncode == 1 and "nope.eml: No such file or directory" in result.stderr


def test_check_config_names_policy_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "local.yaml").write_text("match: first\nrules:\n  - name: x\n    action: explode\n")
    result = mailward(config_with(tmp_path, policies), "check-config")
    assert result.returncode == 1
    assert f"{policies}/local.yaml:4: rules[0].action: expected one of" in result.stderr


def test_check_config_accepts_shipped_policies(tmp_path: Path) -> None:
    result = mailward(config_with(tmp_path, REPO_POLICIES), "check-config")
    assert result.returncode == 0, result.stderr
    assert "policy files" in result.stdout


def test_check_config_warns_when_there_are_no_rules(tmp_path: Path) -> None:
    result = mailward(config_with(tmp_path, tmp_path / "none"), "check-config")
    assert result.returncode == 0 and "no DLP rules" in result.stderr


def test_policy_test_shows_the_keys_on_file_for_a_protected_recipient(tmp_path: Path) -> None:
    identity = smime_identity(tmp_path / "keys" / "smime", "pat@example.org")
    eml = tmp_path / "m.eml"
    eml.write_bytes(b.message(f"SSN {SSN}", to="pat@example.org"))
    config = write_config(tmp_path, {"policies_dir": str(REPO_POLICIES),
                                     "keys": {"smime_dir": str(tmp_path / "keys" / "smime")}})
    result = mailward(config, "policy", "test", str(eml))
    assert result.returncode == 0, result.stderr
    fingerprint = identity.certificate.fingerprint(hashes.SHA256()).hex()
    assert f"else S/MIME (key {fingerprint[:16]}), else pgp (no key on file)" in result.stdout
