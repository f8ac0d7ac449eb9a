"""scripts/install into a temporary root: the venv, the hardened unit (verified by systemd),
sysusers/tmpfiles, an /etc/mailward skeleton with 0600 keys; run twice, it keeps what exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def install(prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "install"), "--prefix", str(prefix)],
                          capture_output=True, text=True, timeout=600)


def test_install_into_a_prefix_is_complete_verified_and_idempotent(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    first = install(prefix)
    assert first.returncode == 0, first.stderr
    etc = prefix / "etc" / "mailward"
    mailward = prefix / "opt" / "mailward" / "venv" / "bin" / "mailward"
    assert mailward.is_file()
    for key in ("spool.key", "audit.key", "unsubscribe.key"):
        assert (etc / "keys" / key).stat().st_mode & 0o777 == 0o600
    assert (etc / "policies" / "healthcare.yaml").is_file()
    assert (prefix / "usr/lib/sysusers.d/mailward.conf").read_text().startswith("#")
    assert "/var/lib/mailward" in (prefix / "usr/lib/tmpfiles.d/mailward.conf").read_text()
    check = subprocess.run([str(mailward), "-c", str(etc / "config.yaml"), "check-config"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr

    # The unit as installed, with its paths pointed into the prefix, passes systemd's checks.
    unit = (prefix / "etc/systemd/system/mailward.service").read_text()
    probe = tmp_path / "mailward.service"
    probe.write_text(unit.replace("/opt/mailward", str(prefix / "opt" / "mailward")))
    verify = subprocess.run(["systemd-analyze", "verify", str(probe)], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0 and "mailward.service" not in verify.stderr, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(probe)],
                              capture_output=True, text=True, timeout=120)
    assert "Overall exposure level for mailward.service" in security.stdout
    level = security.stdout.rsplit("exposure level for mailward.service:", 1)[1].split()
    assert float(level[0]) <= 4.0 and level[1] in ("OK", "SAFE"), security.stdout[-300:]

    # Again: code upgraded, nothing of the admin's replaced.
    (etc / "config.yaml").write_text((etc / "config.yaml").read_text() + "# edited by the admin\n")
    spool_key = (etc / "keys" / "spool.key").read_bytes()
    second = install(prefix)
    assert second.returncode == 0, second.stderr
    assert (etc / "config.yaml").read_text().endswith("# edited by the admin\n")
    assert (etc / "keys" / "spool.key").read_bytes() == spool_key


@pytest.fixture(autouse=True)
def _needs_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/test installs Debian's systemd package")
