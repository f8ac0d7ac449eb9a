"""A newcomer's first hour with the command line: each thing that went wrong for one, as they
typed it. Keys made for the config that names them, a busy port in one line, a check-config that
writes nothing, failed lookups reported as failures, and the small answers that tell what is so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit.events import Audit
from gateway.config import Config, load_config
from gateway.message import ClientInfo, Envelope, QueuedMessage, Recipient
from gateway.spool import new_queue_id
from tests.conftest import GatewayProcess, mailward_cli, open_test_spool
from tests.dnsserver import start_dns
from tests.polling import free_port
from tests.test_cli import mailward


def test_keygen_dkim_works_with_the_config_that_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("domains:\n  example.com:\n"
                      "    dkim: [{selector: s1, key_file: keys/example.com.s1.pem}]\n")
    assert mailward(config, "check-config").returncode == 1  # the key is missing: said, and how to make it
    made = mailward(config, "keygen", "dkim", "example.com", "--selector", "s1")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "keys" / "example.com.s1.pem").stat().st_mode & 0o777 == 0o600  # where the config says
    assert mailward(config, "check-config").returncode == 0


def test_a_busy_port_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mailward.yaml"
    config.write_text(f"listeners: [{{address: 127.0.0.1, port: {port}}}]\nmetrics: {{listen: null}}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = mailward(config, "run")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("hostname: mx.example.com\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = mailward(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ./var/tls/selfsigned.*
    assert "self-signed" in result.stderr


def test_config_may_come_after_the_command(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("hostname: mx.example.com\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and str(config) in result.stdout


async def test_a_failed_dns_lookup_is_reported_as_failed_not_as_missing(tmp_path: Path) -> None:
    server, port = await start_dns("127.0.0.53", {}, servfail=["_dmarc.example.com", "example.com"])
    try:
        config = tmp_path / "mailward.yaml"
        config.write_text(f"delivery: {{nameservers: ['127.0.0.53:{port}']}}\n")
        code, out = await mailward_cli(config, "dns", "check", "example.com")
        assert code == 1
        assert "_dmarc.example.com: DNS lookup failed" in out and "no DMARC record" not in out
        code, out = await mailward_cli(config, "tls", "probe", "example.com")  # SERVFAIL
        assert code == 1
        code, out = await mailward_cli(config, "tls", "probe", "nowhere.example.com")  # NXDOMAIN
        assert code == 1
    finally:
        assert server.transport is not None
        server.transport.close()


async def test_status_is_1_when_another_server_holds_the_listeners_port(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as imposter:  # e.g. Debian's own Postfix on port 25
        imposter.bind(("127.0.0.1", port))
        imposter.listen()
        config = tmp_path / "status.yaml"
        config.write_text(f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n")
        code, out = await mailward_cli(config, "status")
    assert code == 1 and "DOWN" in out


def queued_without_message_id(config_file: Path) -> str:
    spool = open_test_spool(config_file)
    message = QueuedMessage(queue_id=new_queue_id(), received_at=time.time(),
                            envelope=Envelope("a@example.com", (Recipient("b@example.org"),)),
                            client=ClientInfo(address="127.0.0.1", helo="x", listener="test"), size=10)
    spool.store_sync(message, b"Subject: x\r\n\r\nbody\r\n")
    spool.close()
    return message.queue_id


def test_small_answers_say_what_is_so(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("relay: {users_file: users.yaml}\nspool: {dir: spool, key_file: spool.key}\n")
    assert mailward(config, "keygen", "spool").returncode == 0
    queue_id = queued_without_message_id(config)
    shown = mailward(config, "queue", "show", queue_id)
    assert "message_id: -" in shown.stdout and "None" not in shown.stdout
    users = mailward(config, "user", "list")
    assert users.returncode == 0 and users.stdout == "" and "no users" in users.stderr
    suppressed = mailward(config, "suppress", "list")
    assert suppressed.returncode == 0 and "empty" in suppressed.stderr
    revoke = mailward(config, "portal", "revoke", "a" * 40)
    assert revoke.returncode == 1 and "portal is off" in revoke.stderr


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary\xff" * 20, b"just a line of text\n"])
def test_policy_test_refuses_what_is_not_a_message(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("hostname: mx.example.com\n")
    eml = tmp_path / "x.eml"
    eml.write_bytes(content)
    result = mailward(config, "policy", "test", str(eml))
    assert result.returncode == 1 and "not an email message" in result.stderr
    assert "recipient@invalid" not in result.stdout


def test_policy_test_does_not_promise_a_portal_that_is_off(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    config = tmp_path / "mailward.yaml"
    config.write_text("policies_dir: policies\nportal: {enabled: false}\n")
    eml = tmp_path / "x.eml"
    eml.write_bytes(b"From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nSSN 219-45-6789\r\n")
    result = mailward(config, "policy", "test", str(eml))
    assert result.returncode == 0, result.stderr
    assert "the secure portal is off" in result.stdout


def test_audit_search_finds_a_message_id_typed_without_brackets(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("audit: {dir: audit, key_file: audit.key}\n")
    audit = Audit.open(load_config(config).audit)
    audit.write_sync({"event": "received", "queue_id": "Q1", "message_id": "<abc@example.com>",
                      "sender": "a@example.com", "recipients": ["b@example.org"]})
    audit.close()
    found = mailward(config, "audit", "search", "--message-id", "abc@example.com")
    assert found.returncode == 0 and '"queue_id": "Q1"' in found.stdout


def test_dlp_workers_default_to_the_cores_but_one() -> None:
    config: Config = load_config(None)
    assert config.dlp.workers == max(1, (os.cpu_count() or 2) - 1)
