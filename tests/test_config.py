"""Config loading: defaults, units, lookup order, and errors that name file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Config, find_config_file, load_config, parse_config
from gateway.errors import ConfigError, ConfigErrors
from tests.dkimverify import make_key


def parse(text: str, tmp_path: Path) -> Config:
    return parse_config(text, file=str(tmp_path / "c.yaml"), base_dir=tmp_path)


def run_check(config_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(config_file), "check-config"],
                          capture_output=True, text=True, timeout=60)


def test_embedded_defaults_match_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    listener = config.listeners[0]
    assert (listener.address, listener.port, listener.starttls) == ("127.0.0.1", 2525, "optional")
    assert [str(n) for n in config.relay.networks] == ["127.0.0.0/8"]
    assert config.spool.dir == tmp_path / "var" / "spool"
    assert config.metrics.listen == "127.0.0.1:9464"
    assert config.portal.base_url == "http://127.0.0.1:8080"
    assert config.delivery.smtp_port == 25
    assert config.source is None


def test_durations_and_sizes_are_parsed_to_seconds_and_bytes(tmp_path: Path) -> None:
    config = parse("limits: {max_message_size: 512KB, command_timeout: 2m}\n"
                   "delivery: {retry_schedule: [30s, 5m, 2h], max_queue_age: 5d}\n"
                   "audit: {retention: 6y}\n", tmp_path)
    assert config.limits.max_message_size == 512 * 1024
    assert config.limits.command_timeout == 120
    assert list(config.delivery.retry_schedule) == [30, 300, 7200]
    assert config.delivery.max_queue_age == 5 * 86400
    assert config.audit.retention == 6 * 365 * 86400


def test_starttls_off_stays_a_word_not_a_yaml_boolean(tmp_path: Path) -> None:
    config = parse("listeners:\n  - {address: 0.0.0.0, port: 25, starttls: off, auth: off}\n",
                   tmp_path)
    assert config.listeners[0].starttls == "off"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    config = parse("spool: {dir: ./state/spool}\n", tmp_path)
    assert config.spool.dir == tmp_path / "state" / "spool"
    assert config.spool.key_file == tmp_path / "var" / "keys" / "spool.key"


def test_unknown_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse("hostname: mx.example.com\nlimits:\n  max_mesage_size: 10MB\n", tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'c.yaml'}:3: limits.max_mesage_size: unknown key")


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse("limits: {max_recipients: many}\nspool: {color: red}\n", tmp_path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert ":1: limits.max_recipients: expected a whole number" in lines[0]
    assert ":2: spool.color: unknown key" in lines[1]


def test_auth_without_starttls_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="AUTH is only offered after STARTTLS"):
        parse("listeners:\n  - {port: 587, starttls: off, auth: required}\n", tmp_path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse("hostname: x\nlimits: {max_recipients: 5\n", tmp_path)
    assert f"{tmp_path / 'c.yaml'}:3: YAML syntax error" in str(info.value)


def test_check_config_reports_unknown_key_as_file_line_and_exits_1(tmp_path: Path) -> None:
    config_file = tmp_path / "mailward.yaml"
    config_file.write_text("hostname: mx.example.com\nrelay:\n  networks: [10.0.0.0/8]\n  bogus: 1\n")
    result = run_check(config_file)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"{config_file}:4: relay.bogus: unknown key (allowed here: "
                                     "client_cert_subjects, networks, sender_domains, users_file)")


def test_check_config_reports_bad_type_as_file_line_and_exits_1(tmp_path: Path) -> None:
    config_file = tmp_path / "mailward.yaml"
    config_file.write_text("listeners:\n  - address: 127.0.0.1\n    port: submission\n")
    result = run_check(config_file)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{config_file}:3: listeners[0].port: expected a whole number")


def test_check_config_accepts_the_shipped_example(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    for referenced in ("tls/mailward.crt", "tls/mailward.key", "keys/webhook.secret"):
        (tmp_path / referenced).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / referenced).write_text("")
    make_key(tmp_path / "keys" / "dkim", "example.com", "s1")
    make_key(tmp_path / "keys" / "dkim", "example.com", "e1", "ed25519-sha256")
    config = parse_config(example.read_text(), file=str(example), base_dir=tmp_path)
    assert config.hostname == "mailward.example.com"


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_lookup_prefers_flag_then_environment_then_local_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_file(None) in (None, Path("/etc/mailward/config.yaml"))
    (tmp_path / "mailward.yaml").write_text("{}\n")
    assert find_config_file(None) == Path("mailward.yaml")
    monkeypatch.setenv("MAILWARD_CONFIG", "/srv/from-env.yaml")
    assert find_config_file(None) == Path("/srv/from-env.yaml")
    assert find_config_file("/srv/flag.yaml") == Path("/srv/flag.yaml")


def test_example_config_documents_every_key() -> None:
    import dataclasses
    import typing

    text = (Path(__file__).parent.parent / "config.example.yaml").read_text()
    missing = []

    def walk(cls: type, where: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f"{f.name}:" not in text:
                missing.append(f"{where}{f.name}")
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{where}{f.name}.")

    walk(Config, "")
    assert missing == []


def test_a_cluster_needs_a_node_id_and_no_password_in_its_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse("cluster:\n  redis: redis://:hunter2@10.0.0.5:6379/0\n"
              "  postgres: postgresql://mailward:hunter2@10.0.0.6/mailward\n", tmp_path)
    text = str(info.value)
    assert "cluster.node_id" in text and "each node needs its own node_id" in text
    assert "cluster.redis" in text and "no password in the URL" in text and "redis_password_file" in text
    assert "cluster.postgres" in text and "postgres_password_file" in text
    assert "hunter2" not in text  # a secret is never echoed back


def test_without_a_cluster_section_everything_stays_local(tmp_path: Path) -> None:
    config = parse("hostname: mx.example.com\n", tmp_path)
    assert not config.cluster.enabled and config.cluster.redis is None and config.cluster.postgres is None
