"""The `mailward` command: queue steering while the gateway runs, users, keys, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from gateway.spool import QueueState
from tests.conftest import GatewayProcess, message, open_test_spool


def mailward(config_file: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(config_file), *args],
                          capture_output=True, text=True, input=stdin, timeout=60)


async def queue_messages(gw: GatewayProcess, count: int) -> list[str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
    await client.connect()
    ids = []
    for i in range(count):
        _, reply = await client.sendmail("dr@example.com", ["p@example.org", "q@example.org"],
                                         message(f"CLI{i}"))
        ids.append(reply.split()[-1])
    await client.quit()
    return ids


async def test_queue_list_and_show_while_running(gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    ids = await queue_messages(gw, 2)
    listed = json.loads(mailward(gw.config_file, "queue", "list", "--json").stdout)
    assert [m["queue_id"] for m in listed] == ids
    assert listed[0]["state"] == "incoming"
    assert [r["address"] for r in listed[0]["recipients"]] == ["p@example.org", "q@example.org"]
    human = mailward(gw.config_file, "queue", "list").stdout
    assert ids[0] in human and "<dr@example.com>" in human and "CLI0" not in human
    shown = json.loads(mailward(gw.config_file, "queue", "show", ids[1], "--json").stdout)
    assert shown["message_id"] == "<CLI1@example.com>"
    raw = mailward(gw.config_file, "queue", "show", ids[1], "--message").stdout
    assert "Patient note CLI1" in raw


async def test_hold_release_retry_delete_while_running(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    first, second = await queue_messages(gw, 2)
    assert mailward(gw.config_file, "queue", "hold", first).returncode == 0
    spool = open_test_spool(gw.config_file)
    assert spool.locate(first) is QueueState.HOLD
    assert mailward(gw.config_file, "queue", "release", first).returncode == 0
    assert spool.locate(first) is QueueState.INCOMING
    spool.move(second, QueueState.DEFERRED)
    result = mailward(gw.config_file, "queue", "retry", "--all", "--json")
    assert json.loads(result.stdout) == [{"queue_id": second, "ok": True,
                                          "result": "requeued for immediate delivery"}]
    assert spool.locate(second) is QueueState.INCOMING
    assert mailward(gw.config_file, "queue", "delete", first, second).returncode == 0
    assert spool.locate(first) is None and spool.locate(second) is None
    # The gateway kept serving throughout.
    assert len(await queue_messages(gw, 1)) == 1
    spool.close()


async def test_queue_commands_on_unknown_ids_fail_with_exit_1(
        gateway_process: Callable[..., GatewayProcess]) -> None:
    gw = gateway_process()
    gw.start()
    result = mailward(gw.config_file, "queue", "release", "0123456789ABC0DEF12")
    assert result.returncode == 1 and "no such message" in result.stderr
    result = mailward(gw.config_file, "queue", "show", "../../etc/passwd")
    assert result.returncode == 1 and "not a queue id" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = mailward(tmp_path / "none.yaml", "queue", "frobnicate")
    assert result.returncode == 2


def test_user_add_list_remove(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("relay: {users_file: users.yaml}\n")
    added = mailward(config, "user", "add", "scanner@example.com", stdin="a long enough password\n")
    assert added.returncode == 0, added.stderr
    assert mailward(config, "user", "list").stdout.split() == ["scanner@example.com"]
    assert "a long enough password" not in (tmp_path / "users.yaml").read_text()
    assert mailward(config, "user", "add", "x@example.com", stdin="short\n").returncode == 1
    assert mailward(config, "user", "remove", "scanner@example.com").returncode == 0
    assert mailward(config, "user", "list").stdout == ""
    assert mailward(config, "user", "remove", "scanner@example.com").returncode == 1


def test_keygen_spool_writes_a_private_key_and_rotates(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("spool: {key_file: keys/spool.key}\n")
    assert mailward(config, "keygen", "spool").returncode == 0
    key_file = tmp_path / "keys" / "spool.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = mailward(config, "keygen", "spool")
    assert again.returncode == 1 and "--rotate" in again.stderr
    rotated = mailward(config, "keygen", "spool", "--rotate")
    assert rotated.returncode == 0 and "1 older key(s) kept" in rotated.stdout
    assert len(key_file.read_text().split()) == 2


def test_keygen_dkim_writes_a_private_key_and_prints_its_record(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("spool: {key_file: keys/spool.key}\n")
    made = mailward(config, "keygen", "dkim", "Example.com", "--selector", "s1", "--algorithm", "ed25519")
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "keys" / "dkim" / "example.com.s1.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert 's1._domainkey.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=' in made.stdout
    assert "algorithm: ed25519-sha256" in made.stdout
    # The config snippet it prints is accepted as it stands.
    snippet = made.stdout.split("under domains:\n")[1].split("and check")[0]
    config.write_text(f"spool: {{key_file: keys/spool.key}}\ndomains:\n{snippet}")
    assert mailward(config, "check-config").returncode == 0
    again = mailward(config, "keygen", "dkim", "example.com", "--selector", "s1")
    assert again.returncode == 1 and "pick a new selector" in again.stderr
    rsa = mailward(config, "keygen", "dkim", "example.com", "--selector", "s2")
    assert rsa.returncode == 0 and "k=rsa; p=MII" in rsa.stdout
    # A long RSA record is split into strings of at most 255 characters for the zone file.
    assert all(len(part) <= 255 for part in rsa.stdout.split('"')[1::2])


async def test_status_shows_listeners_queue_failures_and_key_ages(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gw = gateway_process()
    gw.start()
    await queue_messages(gw, 2)
    shown = mailward(gw.config_file, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"127.0.0.1:{gw.port} up" in shown.stdout
    assert "incoming 2" in shown.stdout and "no failures today" in shown.stdout
    assert "certificate OU=Testing cert" in shown.stdout and "spool key  0 days old" in shown.stdout
    found = json.loads(mailward(gw.config_file, "status", "--json").stdout)
    assert found["queue"]["incoming"]["messages"] == 2 and found["listeners"][0]["up"] is True
    gw.stop()
    down = mailward(gw.config_file, "status")
    assert down.returncode == 1 and f"127.0.0.1:{gw.port} DOWN" in down.stdout


def test_building_the_command_line_does_not_load_the_metrics() -> None:
    # `mailward run` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported; an
    # earlier import would leave the ingest process's counters out of /metrics.
    probe = subprocess.run([sys.executable, "-c", "import sys, gateway.cli; gateway.cli._parser(); "
                            "print('prometheus_client' in sys.modules)"], capture_output=True, text=True,
                           timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr
