"""The spool on its own: encryption at rest, journal, states, recovery, keys."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.config import SpoolConfig
from gateway.errors import KeyFileError, SpoolError
from gateway.message import ClientInfo, Envelope, QueuedMessage, Recipient, RecipientState, RecipientStatus
from gateway.spool import QueueState, Spool, SpoolKeyring, new_queue_id, open_spool
from gateway.spool import store as store_module

MARKER = "PHI-MARKER-4711"


def make_message(recipients: int = 1) -> QueuedMessage:
    return QueuedMessage(
        queue_id=new_queue_id(), received_at=time.time(),
        envelope=Envelope(sender="dr.smith@example.com",
                          recipients=tuple(Recipient(f"patient{i}@example.org") for i in range(recipients))),
        client=ClientInfo(address="127.0.0.1", helo="client.test", listener="test"),
        size=100, message_id="<m1@example.com>")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    opened = open_spool(SpoolConfig(dir=tmp_path / "spool", key_file=tmp_path / "spool.key"),
                        create_key=True)
    yield opened
    opened.close()


def content() -> bytes:
    return f"Subject: {MARKER}\r\n\r\nDiagnosis {MARKER}\r\n".encode()


async def test_stored_message_reads_back_with_envelope_and_content(spool: Spool) -> None:
    message = make_message(2)
    await spool.store(message, content())
    assert spool.ids(QueueState.INCOMING) == [message.queue_id]
    loaded = spool.load(message.queue_id)
    assert loaded == message
    assert [s.state for s in loaded.statuses] == [RecipientState.PENDING] * 2
    assert spool.content(message.queue_id) == content()


async def test_no_plaintext_of_body_subject_or_address_on_disk(spool: Spool, tmp_path: Path) -> None:
    message = make_message()
    await spool.store(message, content())
    spool.record(message.queue_id, {0: RecipientStatus(RecipientState.DEFERRED, time.time(), 0,
                                                      "4.2.0", "try later")})
    blobs = [p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    assert len(blobs) == 2  # the message file and its journal
    for blob in blobs:
        assert MARKER.encode() not in blob
        assert b"patient0@example.org" not in blob
        assert b"dr.smith" not in blob


async def test_recipient_results_survive_a_new_process_view(spool: Spool, tmp_path: Path) -> None:
    message = make_message(3)
    await spool.store(message, content())
    spool.record(message.queue_id, {1: RecipientStatus(RecipientState.DELIVERED, 1.0, 0, "2.0.0", "250 ok")})
    spool.record(message.queue_id, {2: RecipientStatus(RecipientState.DEFERRED, 2.0, 0, "4.4.1", "timeout")})
    spool.record(message.queue_id, {2: RecipientStatus(RecipientState.DEFERRED, 3.0, 0, "4.4.1", "timeout")})
    reopened = Spool(tmp_path / "spool", SpoolKeyring.load(tmp_path / "spool.key"))
    statuses = reopened.load(message.queue_id).statuses
    assert [s.state for s in statuses] == [RecipientState.PENDING, RecipientState.DELIVERED,
                                           RecipientState.DEFERRED]
    assert statuses[2].attempts == 2
    assert reopened.load(message.queue_id).pending_recipients() == [0, 2]
    reopened.close()


async def test_torn_last_journal_record_is_ignored(spool: Spool, tmp_path: Path) -> None:
    message = make_message(2)
    await spool.store(message, content())
    spool.record(message.queue_id, {0: RecipientStatus(RecipientState.DELIVERED, 1.0, 0, "2.0.0", "ok")})
    spool.record(message.queue_id, {1: RecipientStatus(RecipientState.DELIVERED, 2.0, 0, "2.0.0", "ok")})
    journal = tmp_path / "spool" / "journal" / message.queue_id
    journal.write_bytes(journal.read_bytes()[:-7])  # a crash in the middle of the last append
    states = [s.state for s in spool.load(message.queue_id).statuses]
    assert states == [RecipientState.DELIVERED, RecipientState.PENDING]


async def test_tampered_message_file_is_refused(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    path = spool.path(QueueState.INCOMING, message.queue_id)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(SpoolError, match="failed authentication"):
        spool.content(message.queue_id)


async def test_messages_stay_readable_after_key_rotation(spool: Spool, tmp_path: Path) -> None:
    old = make_message()
    await spool.store(old, content())
    keyring = SpoolKeyring.create(tmp_path / "spool.key", rotate=True)
    assert len(keyring.keys) == 2
    rotated = Spool(tmp_path / "spool", keyring)
    new = make_message()
    await rotated.store(new, content())
    assert rotated.content(old.queue_id) == content()
    assert rotated.content(new.queue_id) == content()
    assert keyring.current_id.encode() in rotated.path(QueueState.INCOMING, new.queue_id).read_bytes()[:40]
    rotated.close()


async def test_moves_between_states_and_removal(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    assert spool.move(message.queue_id, QueueState.HOLD) is QueueState.INCOMING
    assert spool.locate(message.queue_id) is QueueState.HOLD
    with pytest.raises(SpoolError, match="is in hold"):
        spool.move(message.queue_id, QueueState.INCOMING, only_from=(QueueState.DEFERRED,))
    spool.record(message.queue_id, {0: RecipientStatus(RecipientState.DEFERRED, 1.0, 0, "4.0.0", "x")})
    assert spool.remove(message.queue_id) is QueueState.HOLD
    assert spool.locate(message.queue_id) is None
    assert not (spool.directory / "journal" / message.queue_id).exists()


async def test_deferred_due_time_is_the_file_mtime(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    spool.move(message.queue_id, QueueState.DEFERRED)
    spool.set_due(message.queue_id, QueueState.DEFERRED, 2_000_000_000.0)
    assert spool.due(message.queue_id, QueueState.DEFERRED) == 2_000_000_000.0


async def test_recovery_drops_unfinished_writes_and_requeues_active(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    spool.move(message.queue_id, QueueState.ACTIVE)
    (spool.directory / "tmp" / new_queue_id()).write_bytes(b"half a message")
    (spool.directory / "journal" / new_queue_id()).write_bytes(b"orphan")
    unfinished = spool.recover_writes()
    requeued, quarantined, orphans = spool.recover_active()
    assert (unfinished, requeued, quarantined, orphans) == (1, 1, 0, 1)
    assert spool.locate(message.queue_id) is QueueState.INCOMING
    assert os.listdir(spool.directory / "tmp") == []


def test_queue_ids_are_validated_before_touching_paths(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="not a queue id"):
        spool.locate("../../etc/passwd")


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    SpoolKeyring.create(tmp_path / "k", rotate=False)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    (tmp_path / "k").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        SpoolKeyring.load(tmp_path / "k")


async def test_missing_key_is_not_recreated_over_queued_messages(spool: Spool, tmp_path: Path) -> None:
    await spool.store(make_message(), content())
    (tmp_path / "spool.key").unlink()
    with pytest.raises(KeyFileError, match="restore the key file"):
        open_spool(SpoolConfig(dir=tmp_path / "spool", key_file=tmp_path / "spool.key"),
                   create_key=True)


def test_keygen_refuses_to_overwrite_without_rotate(tmp_path: Path) -> None:
    SpoolKeyring.create(tmp_path / "k", rotate=False)
    with pytest.raises(KeyFileError, match="--rotate"):
        SpoolKeyring.create(tmp_path / "k", rotate=False)


async def test_message_active_at_three_crashes_in_a_row_is_quarantined(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    for expected in (QueueState.INCOMING, QueueState.INCOMING, QueueState.CORRUPT):
        assert spool.claim(message.queue_id, QueueState.INCOMING)
        spool.recover_active()
        assert spool.locate(message.queue_id) is expected


async def test_a_completed_attempt_resets_the_crash_count(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    for _ in range(2):
        spool.claim(message.queue_id, QueueState.INCOMING)
        spool.recover_active()
    spool.record(message.queue_id, {0: RecipientStatus(RecipientState.DEFERRED, 1.0, 0, "4.0.0", "x")})
    spool.claim(message.queue_id, QueueState.INCOMING)
    spool.recover_active()
    assert spool.locate(message.queue_id) is QueueState.INCOMING


def test_spool_key_derivation_is_standard_hkdf() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from gateway.spool.cipher import hkdf_sha256

    master, salt, info = b"m" * 32, b"s" * 16, b"mailward spool file v1"
    reference = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(master)
    assert hkdf_sha256(master, salt, info) == reference


async def test_tracked_journals_read_what_recovery_and_results_wrote(
        spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The delivery process keeps the set of journals in memory: a message without one is loaded
    and finished without touching the journal directory, and one with a journal (from before the
    start, or written since) still has its results read and its journal deleted at the end."""
    old, fresh, never = make_message(), make_message(), make_message()
    for message in (old, fresh, never):
        await spool.store(message, content())
    spool.record(old.queue_id, {0: RecipientStatus(RecipientState.DEFERRED, 1.0, 0, "4.0.0", "x")})
    spool.track_journals()
    journals = tmp_path / "spool" / "journal"
    touched: list[str] = []  # journal paths opened for reading or unlinked from now on
    read_file, unlink = store_module._read_file, os.unlink

    def spy_read(path: Path) -> bytes:
        touched.append(str(path))
        return read_file(path)

    def spy_unlink(path: str | Path, *args: object, **kwargs: object) -> None:
        touched.append(str(path))
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_read_file", spy_read)
    monkeypatch.setattr(os, "unlink", spy_unlink)
    assert spool.load(old.queue_id).statuses[0].state is RecipientState.DEFERRED
    assert spool.load(never.queue_id).statuses[0].state is RecipientState.PENDING
    spool.record(fresh.queue_id, {0: RecipientStatus(RecipientState.DEFERRED, 2.0, 0, "4.0.0", "y")})
    spool.record(fresh.queue_id, {0: RecipientStatus(RecipientState.DEFERRED, 3.0, 0, "4.0.0", "z")})
    assert spool.load(fresh.queue_id).statuses[0].attempts == 2
    assert sorted(os.listdir(journals)) == sorted([old.queue_id, fresh.queue_id])
    for message in (old, fresh, never):
        assert spool.claim(message.queue_id, QueueState.INCOMING)
        spool.finish(message.queue_id)
    assert os.listdir(journals) == []
    assert spool.ids(QueueState.ACTIVE) == []
    # The message that never had a journal was loaded and finished without looking for one.
    assert not [path for path in touched if path.endswith(f"journal/{never.queue_id}")]
    assert [path for path in touched if path.endswith(f"journal/{old.queue_id}")]


async def test_a_deferral_is_handed_to_the_scheduler_once(spool: Spool) -> None:
    message = make_message()
    await spool.store(message, content())
    assert spool.claim(message.queue_id, QueueState.INCOMING)
    spool.defer(message.queue_id, 1234.0)
    assert spool.take_deferral(message.queue_id) == 1234.0
    assert spool.take_deferral(message.queue_id) is None
    assert spool.due(message.queue_id, QueueState.DEFERRED) == 1234.0


async def test_a_large_message_in_parts_is_stored_streamed_and_read_whole_or_refused_by_size(
        spool: Spool, tmp_path: Path) -> None:
    message = make_message()
    received = b"Received: from client.test\r\n"
    body = content() + (f"{MARKER} ".encode() * 40 + b"\r\n") * 40_000  # 9 MB: sealed piecewise
    await spool.store(message, (received, body))
    blob = spool.path(QueueState.INCOMING, message.queue_id).read_bytes()
    assert MARKER.encode() not in blob
    assert spool.claim(message.queue_id, QueueState.INCOMING)  # into active/
    with pytest.raises(store_module.TooLarge) as large:
        spool.read(message.queue_id, QueueState.ACTIVE, max_size=1 << 20)
    assert large.value.size == len(blob)  # said without reading it
    loaded, read = spool.read(message.queue_id, QueueState.ACTIVE)
    assert read == received + body and loaded.queue_id == message.queue_id


async def finished(spool: Spool) -> os.stat_result:
    """A message stored, delivered and finished: the stat of the file it left in free/."""
    message = make_message()
    await spool.store(message, content())
    assert spool.claim(message.queue_id, QueueState.INCOMING)
    inode = spool.path(QueueState.ACTIVE, message.queue_id).stat()
    spool.finish(message.queue_id)
    assert spool.locate(message.queue_id) is None
    return inode


async def test_a_finished_message_file_is_emptied_and_reused_for_a_new_one(spool: Spool,
                                                                          tmp_path: Path) -> None:
    """No inode is allocated for a new message while a finished one's file is free: the file
    leaves the queue and its content at once, and the next message is written into it."""
    old = await finished(spool)
    free = tmp_path / "spool" / store_module.FREE
    assert [p.stat().st_size for p in free.iterdir()] == [0]
    message = make_message()
    await spool.store(message, content())
    new = spool.path(QueueState.INCOMING, message.queue_id).stat()
    assert (new.st_ino, new.st_mode & 0o777) == (old.st_ino, 0o600)
    assert spool.load(message.queue_id) == message and spool.content(message.queue_id) == content()
    assert list(free.iterdir()) == []
    await spool.store(make_message(), content())  # none free: a new file, as before
    assert len(spool.ids(QueueState.INCOMING)) == 2


async def test_two_processes_never_take_the_same_free_file(spool: Spool, tmp_path: Path) -> None:
    """Two spool views (an ingest process each) take from one free/: the rename decides, so each
    file goes to one message, and the one that lost creates a file."""
    for _ in range(3):
        await finished(spool)
    other = open_spool(SpoolConfig(dir=tmp_path / "spool", key_file=tmp_path / "spool.key"))
    try:
        other._free_name()  # it saw all three names, then this view takes them
        messages = [make_message() for _ in range(6)]
        for index, message in enumerate(messages):
            await (spool if index % 2 else other).store(message, content())
        inodes = [spool.path(QueueState.INCOMING, m.queue_id).stat().st_ino for m in messages]
        assert len(set(inodes)) == 6
        assert all(spool.content(m.queue_id) == content() for m in messages)
    finally:
        other.close()


async def test_free_files_are_bounded_and_removed_at_recovery(spool: Spool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FREE_FILES", 2)
    monkeypatch.setattr(store_module, "_FREE_RECOUNT", 1)
    for _ in range(4):
        await finished(spool)
    free = tmp_path / "spool" / store_module.FREE
    assert len(list(free.iterdir())) <= 2
    (free / "left-by-a-crash").write_bytes(b"ciphertext")
    spool.recover_writes()
    assert list(free.iterdir()) == []


def test_stored_metadata_is_what_asdict_gives() -> None:
    import dataclasses

    from gateway.message import PolicyDecision

    message = dataclasses.replace(make_message(3), pool="bulk", about="X" * 20,
                                  policy=PolicyDecision(action="encrypt", rules=("phi",), protect=(0, 2)))
    expected = dataclasses.asdict(message)
    expected.pop("statuses")
    assert message.to_dict() == expected
    assert QueuedMessage.from_dict(message.to_dict()) == message


async def test_an_empty_free_directory_is_listed_again_after_a_few_new_files(spool: Spool,
                                                                            tmp_path: Path) -> None:
    """Found empty, free/ is not listed for every message; a file another process put there is
    taken once the process looks again."""
    await spool.store(make_message(), content())  # free/ is empty: listed, then left alone
    other = open_spool(SpoolConfig(dir=tmp_path / "spool", key_file=tmp_path / "spool.key"))
    try:
        inode = await finished(other)  # the delivery process frees a file
    finally:
        other.close()
    inodes = []
    for _ in range(34):
        message = make_message()
        await spool.store(message, content())
        inodes.append(spool.path(QueueState.INCOMING, message.queue_id).stat().st_ino)
    assert inode.st_ino not in inodes[:32] and inode.st_ino in inodes[32:]
