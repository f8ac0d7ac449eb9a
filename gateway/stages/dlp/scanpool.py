"""Scan workers: DLP runs in separate processes so that a large or hostile message never holds
up the event loop (and its GIL) that serves every other SMTP session, and so that scans use the
other cores.

Each worker is a process of its own (`gateway.stages.dlp.worker`) serving one scan at a time
over a socket pair: the message bytes go as one buffer (no pickling of the content), the
request and the summary as small pickles. The
scanner keeps to its own deadline; if a worker still has not answered `grace` seconds after it,
or dies, it is killed and replaced, and the caller gets `ScanFailed` (the policy's on_error
decides). Workers die with the gateway (PR_SET_PDEATHSIG). They start when a scan needs one, up
to `dlp.workers`, and one left without work for `IDLE_EXIT` seconds exits, as Postfix's daemons
do: a gateway whose mail is all small keeps no worker's memory (50 MB each).

Small messages (up to `inline_max` bytes, 64 KB by default) are first scanned on the event loop
itself under tight bounds (256 KB of text and of inflated archives, 3 PDF pages, 50 ms of the
thread's CPU time, so that a busy machine does not send ordinary mail to a worker): a 5 KB
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
        self.idle_since = 0.0

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


# Seconds a free worker waits for work before it exits. Postfix lets its daemons idle 100 s
# (max_idle), but they cost a few MB; a scan worker holds its detectors (about 50 MB), and a
# second of start-up for the next large message is the cheaper side of the trade.
IDLE_EXIT = 30.0
_INLINE_LIMITS = {"max_inflated": 256 * 1024, "max_text": 256 * 1024, "max_pdf_pages": 3}
_INLINE_BUDGET = 0.05


@functools.lru_cache(maxsize=8)  # one request per policy version: not rebuilt per message
def inline_request(request: ScanRequest) -> ScanRequest:
    """`request` with the tight bounds of an on-loop scan."""
    limits = dataclasses.replace(request.limits, **{
        key: min(getattr(request.limits, key), value) for key, value in _INLINE_LIMITS.items()})
    return dataclasses.replace(request, limits=limits, budget=min(request.budget, _INLINE_BUDGET),
                               clock="thread_time")


class ScanPool:
    def __init__(self, workers: int, *, grace: float = 5.0, inline_max: int = 64 * 1024,
                 idle_exit: float = IDLE_EXIT) -> None:
        self.size = workers
        self.grace = grace
        self.inline_max = inline_max
        self.idle_exit = idle_exit
        self._threads = ThreadPoolExecutor(max_workers=max(workers, 2), thread_name_prefix="dlp-scan")
        self._workers: list[_Worker] = []  # started, busy or free
        self._free: list[_Worker] = []  # the most recently used last: it is taken first
        self._starting = 0
        self._waiters: list[asyncio.Future[None]] = []  # scans waiting for a free worker
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    async def start(self) -> None:
        """Start every worker now (they otherwise start as scans need them)."""
        while len(self._workers) + self._starting < self.size:
            self._release(await self._spawn())

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
        worker = await self._acquire()
        try:
            return await loop.run_in_executor(self._threads, worker.scan, raw, request, timeout)
        except ScanFailed:
            worker = await loop.run_in_executor(self._threads, self._replace, worker)
            raise
        finally:
            self._release(worker)

    async def _acquire(self) -> _Worker:
        """A free worker; else a new one while there are fewer than `size`; else wait for one."""
        while not self._free and len(self._workers) + self._starting >= self.size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        return self._free.pop() if self._free else await self._spawn()

    async def _spawn(self) -> _Worker:
        self._starting += 1
        try:
            worker = await asyncio.get_running_loop().run_in_executor(self._threads, _Worker)
        finally:
            self._starting -= 1
        self._workers.append(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        worker.idle_since = loop.time()
        self._free.append(worker)
        if self._reaper is None:
            self._reaper = loop.call_later(self.idle_exit, self._reap)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                break

    def _reap(self) -> None:
        """Workers free for `idle_exit` seconds exit: a gateway whose mail is scanned on the
        event loop (small messages) keeps no worker's memory. The next large message starts one
        again (about a second)."""
        self._reaper = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_exit
        for worker in [w for w in self._free if w.idle_since <= deadline]:
            self._free.remove(worker)
            self._workers.remove(worker)
            self._threads.submit(worker.kill)
        if self._free:  # the next one to come of age
            due = min(w.idle_since for w in self._free) + self.idle_exit
            self._reaper = loop.call_at(due, self._reap)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for worker in self._workers:
            worker.kill()
        self._workers.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
