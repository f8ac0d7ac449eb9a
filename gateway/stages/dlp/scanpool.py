"""Scan workers: DLP runs in separate processes so that a large or hostile message never holds
up the event loop (and its GIL) that serves every other SMTP session, and so that scans use the
other cores.

Each worker is a process of its own (`gateway.stages.dlp.worker`) serving one scan at a time
over a socket pair: the message bytes go
as one buffer (no pickling of the content), the request and the summary as small pickles. The
scanner keeps to its own deadline; if a worker still has not answered `grace` seconds after it,
or dies, it is killed and replaced, and the caller gets `ScanFailed` (the policy's on_error
decides). Workers die with the gateway (PR_SET_PDEATHSIG).

Small messages (up to `inline_max` bytes, 64 KB by default) are first scanned on the event loop
itself under tight bounds (256 KB of text and of inflated archives, 3 PDF pages, 50 ms): a 5 KB
note costs well under a millisecond there, less than the trip to a worker. If any bound is hit
(a small zip that inflates, a PDF), the message is scanned again in a worker with the full limits.

With ``workers: 0`` scans run in a thread of the gateway process instead: no isolation, for
small sites and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing.connection
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from gateway.stages.dlp.scanner import ScanRequest, ScanSummary, scan_message


class ScanFailed(Exception):
    """The scan did not produce a summary: `reason` is "timeout" or "scan_failed"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def serve(connection: multiprocessing.connection.Connection) -> None:
    """The worker's loop: one message in, one summary (or the error's type name) out."""
    from gateway.memory import LARGE, release_freed

    while True:
        try:
            raw = connection.recv_bytes()
            request = connection.recv()
        except (EOFError, OSError):
            return
        try:
            result: ScanSummary | str = scan_message(raw, request)
        except Exception as exc:  # a scanner bug must not take the worker down with it
            result = type(exc).__name__
        connection.send(result)
        if len(raw) > LARGE:
            del raw
            release_freed()


class _Worker:
    """One scan worker: ``python -m gateway.stages.dlp.worker`` on one end of a socket pair. A
    process of its own that imports the scanner and nothing else (not the gateway's web, SMTP
    and crypto stacks), so it costs its detectors and little more."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.stages.dlp.worker", str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        self.connection = multiprocessing.connection.Connection(ours.detach())

    def scan(self, raw: bytes, request: ScanRequest, timeout: float) -> ScanSummary:
        """Blocking; runs in a pool thread. Raises ScanFailed."""
        try:
            self.connection.send_bytes(raw)
            self.connection.send(request)
            if not self.connection.poll(timeout):
                raise ScanFailed("timeout")
            result = self.connection.recv()
        except (EOFError, OSError, BrokenPipeError):
            raise ScanFailed("scan_failed") from None
        if isinstance(result, str):
            raise ScanFailed("scan_failed")
        assert isinstance(result, ScanSummary)
        return result

    def kill(self) -> None:
        self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.connection.close()


_INLINE_LIMITS = {"max_inflated": 256 * 1024, "max_text": 256 * 1024, "max_pdf_pages": 3}
_INLINE_BUDGET = 0.05


@functools.lru_cache(maxsize=8)  # one request per policy version: not rebuilt per message
def inline_request(request: ScanRequest) -> ScanRequest:
    """`request` with the tight bounds of an on-loop scan."""
    limits = dataclasses.replace(request.limits, **{
        key: min(getattr(request.limits, key), value) for key, value in _INLINE_LIMITS.items()})
    return dataclasses.replace(request, limits=limits, budget=min(request.budget, _INLINE_BUDGET))


class ScanPool:
    def __init__(self, workers: int, *, grace: float = 5.0, inline_max: int = 64 * 1024) -> None:
        self.size = workers
        self.grace = grace
        self.inline_max = inline_max
        self._threads = ThreadPoolExecutor(max_workers=max(workers, 2), thread_name_prefix="dlp-scan")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: list[_Worker] = []
        self._starting: asyncio.Lock | None = None

    async def start(self) -> None:
        """Spawn the workers (once; `scan` calls this too, for policies that appear on reload)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            loop = asyncio.get_running_loop()
            while len(self._workers) < self.size:
                worker = await loop.run_in_executor(self._threads, _Worker)
                self._workers.append(worker)
                self._idle.put_nowait(worker)

    async def scan(self, raw: bytes, request: ScanRequest) -> ScanSummary:
        """The summary, or ScanFailed. If the caller is cancelled (the client went away), the
        scan still runs to its end, so a worker is never handed out while it is busy."""
        if len(raw) <= self.inline_max:
            quick = scan_message(raw, inline_request(request))
            if not quick.limits_hit:
                return quick
        task = asyncio.ensure_future(self._scan(raw, request))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        return await asyncio.shield(task)

    async def _scan(self, raw: bytes, request: ScanRequest) -> ScanSummary:
        loop = asyncio.get_running_loop()
        timeout = request.budget + self.grace
        if self.size == 0:
            try:
                return await asyncio.wait_for(
                    loop.run_in_executor(self._threads, scan_message, raw, request), timeout)
            except TimeoutError:
                raise ScanFailed("timeout") from None
            except Exception as exc:
                raise ScanFailed("scan_failed") from exc
        if len(self._workers) < self.size:
            await self.start()
        worker = await self._idle.get()
        try:
            return await loop.run_in_executor(self._threads, worker.scan, raw, request, timeout)
        except ScanFailed:
            worker = await loop.run_in_executor(self._threads, self._replace, worker)
            raise
        finally:
            self._idle.put_nowait(worker)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._workers.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
