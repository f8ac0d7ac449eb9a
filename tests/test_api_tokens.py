"""API tokens: named and scoped, printed once and kept only as a hash; the status API answers a
token with the status scope, refuses one without it (403) and an unknown one (401)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import Config
from tests.polling import free_port
from tests.test_cli import mailward


def make_token(config: Path, name: str, *options: str) -> str:
    made = mailward(config, "api", "token", "add", name, *options)
    assert made.returncode == 0, made.stderr
    return made.stdout.split(": ", 1)[1].strip()


def test_a_token_is_printed_once_and_kept_as_a_hash(tmp_path: Path) -> None:
    config = tmp_path / "mailward.yaml"
    config.write_text("api: {tokens_file: api-tokens}\n")
    token = make_token(config, "ehr", "--scope", "send,status", "--sender-domain", "clinic.example")
    stored = (tmp_path / "api-tokens").read_text()
    assert token not in stored and "sha256:" in stored
    assert (tmp_path / "api-tokens").stat().st_mode & 0o777 == 0o600
    listed = mailward(config, "api", "token", "list").stdout
    assert "ehr\tsend,status\tsenders=clinic.example\tpools=any" in listed
    assert mailward(config, "api", "token", "add", "ehr", "--scope", "status").returncode == 1  # name taken
    assert mailward(config, "api", "token", "add", "x", "--scope", "admin").returncode == 1  # no such scope
    assert mailward(config, "api", "token", "remove", "ehr").returncode == 0
    assert "ehr" not in mailward(config, "api", "token", "list").stdout


async def test_the_status_api_needs_the_status_scope(
        make_config: Callable[..., Config], start_gateway: Any, tmp_path: Path) -> None:
    port = free_port()
    tokens = tmp_path / "api-tokens"
    config_file = tmp_path / "tokens.yaml"
    config_file.write_text(f"api: {{tokens_file: {tokens}}}\n")
    status = make_token(config_file, "monitor", "--scope", "status")
    sender = make_token(config_file, "sender", "--scope", "send")
    await start_gateway(make_config(api={"listen": f"127.0.0.1:{port}", "tokens_file": str(tokens)}))
    async with aiohttp.ClientSession() as client:
        async def status_of(token: str) -> int:
            async with client.get(f"http://127.0.0.1:{port}/api/v1/queue",
                                  headers={"Authorization": f"Bearer {token}"}) as answer:
                return answer.status

        assert await status_of(status) == 200
        assert await status_of(sender) == 403
        assert await status_of(status + "x") == 401
