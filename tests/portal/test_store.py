"""The portal store: sealed at rest, found only through the link's token, revoked and expired
messages gone for good with a tombstone, the master key private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.portal.store import (
    PortalError,
    PortalMessage,
    PortalStore,
    Tombstone,
    message_id_of,
    open_store,
)
from tests.conftest import write_config
from tests.stages.dlp import builders as b
from tests.test_cli import mailward

MARKER = "PORTAL-MARKER-219-45-6789"


def store_in(tmp_path: Path) -> PortalStore:
    return open_store(tmp_path / "portal", tmp_path / "keys" / "portal.key", create_key=True)


def test_stored_message_is_unreadable_on_disk_and_found_by_its_token(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    content = b.message(f"Results {MARKER}", subject=f"Subject {MARKER}")
    token, record = store.store(content, recipient="pat@example.org", sender="dr@clinic.example", ttl=3600)
    assert len(token) >= 32 and record.message_id == message_id_of(token)
    for path in (tmp_path / "portal").iterdir():
        raw = path.read_bytes()
        assert MARKER.encode() not in raw and b"pat@example.org" not in raw and token.encode() not in raw
    loaded = store.load(message_id_of(token))
    assert isinstance(loaded, tuple) and loaded[1] == content and loaded[0].recipient == "pat@example.org"
    assert store.load(message_id_of(token + "x")) is None


def test_master_key_is_private(tmp_path: Path) -> None:
    store_in(tmp_path)
    assert stat.S_IMODE((tmp_path / "keys" / "portal.key").stat().st_mode) == 0o600


def test_revoked_message_leaves_only_a_tombstone(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    _, record = store.store(b"x", recipient="a@b.example", sender="c@d.example", ttl=3600)
    assert store.remove(record.message_id, "revoked")
    gone = store.load(record.message_id)
    assert isinstance(gone, Tombstone) and gone.reason == "revoked"
    assert not (tmp_path / "portal" / f"{record.message_id}.msg").exists()


def test_expired_message_is_deleted_when_read_or_swept(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    _, first = store.store(b"x", recipient="a@b.example", sender="c@d.example", ttl=0.0)
    _, second = store.store(b"y", recipient="a@b.example", sender="c@d.example", ttl=0.0)
    gone = store.load(first.message_id)
    assert isinstance(gone, Tombstone) and gone.reason == "expired"
    assert len(store.expire()) == 1 and store.ids() == []
    assert isinstance(store.load(second.message_id), Tombstone)


def test_tampered_file_is_an_error_not_content(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    _, record = store.store(b"secret", recipient="a@b.example", sender="c@d.example", ttl=3600)
    path = tmp_path / "portal" / f"{record.message_id}.msg"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(PortalError):
        store.load(record.message_id)


def test_update_keeps_content_and_changes_counters(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    _, record = store.store(b"body", recipient="a@b.example", sender="c@d.example", ttl=3600)
    changed = store.update(record, b"body", failed_codes=3)
    loaded = store.load(record.message_id)
    assert isinstance(loaded, tuple) and loaded == (changed, b"body")
    assert isinstance(changed, PortalMessage) and changed.failed_codes == 3


def test_portal_revoke_command(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"portal": {"store_dir": "var/portal",
                                                "key_file": "var/keys/portal.key"}})
    store = open_store(tmp_path / "var" / "portal", tmp_path / "var" / "keys" / "portal.key", create_key=True)
    _, record = store.store(b"x", recipient="a@b.example", sender="c@d.example", ttl=3600)
    result = mailward(config, "portal", "revoke", record.message_id)
    assert result.returncode == 0 and "revoked" in result.stdout
    again = mailward(config, "portal", "revoke", record.message_id)
    assert again.returncode == 1 and "no such portal message" in again.stderr
