"""docs/backup-restore.md, tried: the documented archives of config, keys and state, restored into
an empty place, give back the queue, a verifying audit log and the suppression list."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from tests.conftest import GatewayProcess, message


def mailward(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(config_file), *args],
                          capture_output=True, text=True, timeout=60)


async def test_backup_and_restore_keep_queue_audit_and_suppressions(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gw = gateway_process()
    gw.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
    await client.connect()
    for i in range(3):
        await client.sendmail("dr@example.com", ["p@example.org"], message(f"B{i}"))
    await client.quit()
    assert mailward(gw.config_file, "suppress", "add", "gone@example.org").returncode == 0
    gw.signal(15)
    assert await asyncio.get_running_loop().run_in_executor(None, gw.wait) == 0

    # Backup, as the doc does it: the state directory (here var/, with the keys in it), and the
    # suppression database through sqlite3's online backup.
    state = tmp_path / "var"
    backup = tmp_path / "backup"
    backup.mkdir()
    subprocess.run(["sqlite3", str(state / "suppression.sqlite"), f".backup {backup / 'suppression.sqlite'}"],
                   check=True, timeout=60)
    subprocess.run(["tar", "-C", str(tmp_path), "-czf", str(backup / "var.tgz"), "--exclude",
                    "var/suppression.sqlite*", "var"], check=True, timeout=60)

    # Disaster: the state is gone. Restore.
    shutil.rmtree(state)
    subprocess.run(["tar", "-C", str(tmp_path), "-xzf", str(backup / "var.tgz")], check=True, timeout=60)
    shutil.copy(backup / "suppression.sqlite", state / "suppression.sqlite")

    verified = mailward(gw.config_file, "audit", "verify")
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stdout + verified.stderr
    queued = json.loads(mailward(gw.config_file, "queue", "list", "--json").stdout)
    assert len(queued) == 3
    listed = json.loads(mailward(gw.config_file, "suppress", "list", "--json").stdout)
    assert [e["address"] for e in listed] == ["gone@example.org"]
    gw.start()  # and the gateway runs on the restored state
    assert json.loads(mailward(gw.config_file, "queue", "list", "--json").stdout)[0]["state"] == "incoming"
