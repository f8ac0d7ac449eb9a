"""One audit writer per gateway: child processes send their records to the main process over a
socket pair. A child's write returns only once the records are durable in the one chain, fails when
the writer cannot append or is gone, and no child process opens the audit log itself."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest

from gateway.audit import reader
from gateway.audit.link import AuditLinkServer, RemoteAuditLog
from gateway.audit.log import AuditLog, log_files
from tests.conftest import GatewayProcess, message
from tests.polling import eventually, free_port
from tests.smtpsink import start_sink
from tests.test_processes import children

KEY = bytes(range(32))


def records(directory: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in log_files(directory) for line in path.read_text().splitlines()]


async def linked(tmp_path: Path) -> tuple[AuditLog, AuditLinkServer, RemoteAuditLog]:
    audit = AuditLog(tmp_path / "audit", KEY)
    server = AuditLinkServer(audit)
    child_end = server.child_socket()
    return audit, server, RemoteAuditLog(child_end.detach(), audit.directory)


async def test_records_from_the_link_join_the_writers_chain(tmp_path: Path) -> None:
    audit, server, remote = await linked(tmp_path)
    await audit.write({"event": "received", "queue_id": "Q1"})
    # Fifty first writes at once must share one connection: a second socket object on the same
    # descriptor closes it when it is collected, and every later write would fail.
    await asyncio.wait_for(asyncio.gather(
        *(remote.write({"event": "delivered", "queue_id": f"Q{n}"}) for n in range(50))), 30)
    gc.collect()
    await asyncio.wait_for(remote.write({"event": "delivered", "queue_id": "Q50"}), 30)
    await audit.write({"event": "received", "queue_id": "Q99"})
    written = records(audit.directory)
    # Every remote write had returned, so every record was on disk: one chain, in seq order.
    assert [r["seq"] for r in written] == list(range(1, 54))
    assert sorted(r["queue_id"] for r in written if r["event"] == "delivered") == \
        sorted(f"Q{n}" for n in range(51))
    assert all(isinstance(r["ts"], str) and r["ts"].endswith("Z") for r in written)
    remote.close()
    await server.close()
    audit.close()
    assert not reader.verify(audit.directory, KEY).problems


async def test_a_failed_append_fails_the_childs_write(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    audit, server, remote = await linked(tmp_path)

    def full(_records: list[dict[str, object]]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit, "append", full)
    with pytest.raises(OSError, match="No space left"):
        await remote.write({"event": "delivered", "queue_id": "Q1"})
    monkeypatch.undo()
    await remote.write({"event": "delivered", "queue_id": "Q2"})  # the link survives the failure
    assert [r["queue_id"] for r in records(audit.directory)] == ["Q2"]
    remote.close()
    await server.close()
    audit.close()


async def test_a_write_fails_when_the_writer_is_gone(tmp_path: Path) -> None:
    audit, server, remote = await linked(tmp_path)
    await remote.write({"event": "delivered", "queue_id": "Q1"})
    await server.close()
    with pytest.raises(OSError):
        await asyncio.wait_for(remote.write({"event": "delivered", "queue_id": "Q2"}), 10)
    remote.close()
    audit.close()


def audit_files_open(pid: int, directory: Path) -> list[str]:
    opened = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(directory)):
            opened.append(target)
    return opened


async def test_child_processes_write_through_the_main_process(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    sink_port = free_port("127.0.0.21")
    sink, server = await start_sink("127.0.0.21", sink_port)
    gw = gateway_process(ingest_processes=2, delivery={
        "paused": False, "nameservers": ["127.0.0.1:9"],
        "routes": {"clinic.test": f"127.0.0.21:{sink_port}"}})
    try:
        gw.start()
        assert gw.proc is not None
        pid = gw.proc.pid
        await eventually(lambda: len(children(pid, "ingest-worker")) == 1
                         and len(children(pid, "delivery")) == 1)
        await eventually(lambda: gw.log.read_text().count("event=listening") == 2)

        async def send(number: int) -> None:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False, timeout=20)
            await client.connect()
            await client.sendmail("dr@example.com", [f"p{number}@clinic.test"], message(f"P{number}"))
            await client.quit()

        await asyncio.gather(*(send(n) for n in range(30)))
        await eventually(lambda: len(sink.messages) >= 30, timeout=60)
        audit_dir = gw.config_file.parent / "var" / "audit"
        await eventually(lambda: sum(r["event"] == "delivered" for r in records(audit_dir)) == 30)
        # Only the main process holds the audit log open; the others write through it.
        assert audit_files_open(pid, audit_dir)
        for child in children(pid, "ingest-worker") + children(pid, "delivery"):
            assert audit_files_open(child, audit_dir) == [], child
        gw.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gw.wait) == 0
        verified = subprocess.run([sys.executable, "-m", "gateway", "-c", str(gw.config_file),
                                   "audit", "verify"], capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        received = [r for r in records(audit_dir) if r["event"] == "received"]
        assert len(received) == 30
    finally:
        gw.stop()
        server.close()
