"""Scan worker processes: a worker that dies or hangs is replaced, and the scan fails closed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator

import pytest

from gateway.stages.dlp.scanner import ScanRequest
from gateway.stages.dlp.scanpool import ScanFailed, ScanPool
from tests.polling import eventually
from tests.stages.dlp import builders as b

PHI = b.message("SSN 219-45-6789")


@pytest.fixture
async def pool() -> AsyncIterator[ScanPool]:
    scan_pool = ScanPool(1, grace=0.5, inline_max=0)
    await scan_pool.start()
    yield scan_pool
    scan_pool.close()


async def test_scan_runs_in_another_process(pool: ScanPool) -> None:
    assert pool._workers[0].process.pid != os.getpid()
    assert (await pool.scan(PHI, ScanRequest())).counts == {"ssn": 1}


async def test_dead_worker_fails_the_scan_and_is_replaced(pool: ScanPool) -> None:
    dead = pool._workers[0].process
    dead.kill()
    dead.wait()
    with pytest.raises(ScanFailed) as caught:
        await pool.scan(PHI, ScanRequest())
    assert caught.value.reason == "scan_failed"
    assert pool._workers[0].process is not dead
    assert (await pool.scan(PHI, ScanRequest())).counts == {"ssn": 1}


async def test_hung_worker_times_out_and_is_replaced(pool: ScanPool) -> None:
    stuck = pool._workers[0].process
    assert stuck.pid is not None
    os.kill(stuck.pid, signal.SIGSTOP)
    with pytest.raises(ScanFailed) as caught:
        await pool.scan(PHI, ScanRequest(budget=0.1))
    assert caught.value.reason == "timeout"
    assert stuck.poll() is not None  # killed
    assert (await pool.scan(PHI, ScanRequest())).counts == {"ssn": 1}


async def test_small_message_is_scanned_on_the_loop_without_a_worker() -> None:
    scan_pool = ScanPool(1)  # never started: a worker scan would wait forever
    try:
        summary = await asyncio.wait_for(scan_pool.scan(PHI, ScanRequest()), 10)
        assert summary.counts == {"ssn": 1}
    finally:
        scan_pool.close()


async def test_small_message_that_hits_a_bound_goes_to_a_worker(pool: ScanPool) -> None:
    pool.inline_max = 1024 * 1024
    members = {f"f{i}.txt": f"SSN 219-45-{6700 + i} " + random.Random(i).randbytes(150_000).hex()
               for i in range(2)}  # 600 KB of text: more than an on-loop scan may inflate
    raw = b.message("see zip", attachments=[("a.zip", b.archive(members), "application/zip")])
    assert len(raw) < pool.inline_max
    summary = await pool.scan(raw, ScanRequest())
    assert summary.counts["ssn"] == 2 and not summary.limits_hit


async def test_in_process_mode_scans_without_workers() -> None:
    scan_pool = ScanPool(0)
    try:
        assert (await scan_pool.scan(PHI, ScanRequest())).counts == {"ssn": 1}
    finally:
        scan_pool.close()


async def test_workers_start_when_needed_and_exit_when_left_idle() -> None:
    scan_pool = ScanPool(2, inline_max=0, idle_exit=0.5)
    try:
        assert scan_pool._workers == []  # nothing started for mail that never needed a worker
        summaries = await asyncio.gather(*(scan_pool.scan(PHI, ScanRequest()) for _ in range(3)))
        assert [s.counts for s in summaries] == [{"ssn": 1}] * 3
        started = [worker.process for worker in scan_pool._workers]
        assert 1 <= len(started) <= 2  # never more than dlp.workers
        await eventually(lambda: scan_pool._workers == [], timeout=10)
        await eventually(lambda: all(process.poll() is not None for process in started), timeout=10)
        assert (await scan_pool.scan(PHI, ScanRequest())).counts == {"ssn": 1}  # a new one starts
        assert len(scan_pool._workers) == 1
    finally:
        scan_pool.close()
