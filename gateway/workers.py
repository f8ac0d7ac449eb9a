"""Child processes: `mailward run` accepts mail in its own process and delivers from a second
one, so that a two-core machine uses both cores (SMTP ingest and delivery are each about half the
work per message). On larger machines `ingest_processes` adds SMTP ingest processes that share
the listening ports (SO_REUSEPORT: the kernel spreads connections over them); DLP scanning has
its own worker processes (`dlp.workers`).

The two share only the spool, which was built for that: a state change is a rename, the ingress
writes new files into ``incoming/`` and tells the scheduler through the wake-up socket, and only
the delivery process touches ``active/`` (it requeues what a crash left there when it starts).

The parent supervises: a delivery process that exits unexpectedly is restarted after a backoff
(1 s doubling to 60 s); SIGHUP is passed on (each process reloads the same config file); on
SIGTERM both drain. The child asks the kernel to kill it if the parent dies (PR_SET_PDEATHSIG),
so a ``kill -9`` of the gateway never leaves a delivery process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from gateway import eventlog, sdnotify
from gateway.audit.link import FD_ENV, AuditLinkServer
from gateway.config import Config
from gateway.lifeline import PARENT_ENV

log = logging.getLogger("mailward")

MIN_BACKOFF, MAX_BACKOFF = 1.0, 60.0


class ChildProcess:
    """A supervised ``mailward run --role ROLE`` child (delivery, or an extra ingest process)."""

    def __init__(self, config: Config, role: str = "delivery", env: dict[str, str] | None = None,
                 audit_link: AuditLinkServer | None = None) -> None:
        self._argv = [sys.executable, "-m", "gateway",
                      *(["-c", str(config.source)] if config.source is not None else []),
                      "run", "--role", role]
        self.role = role
        self._env = env or {}
        self._audit_link = audit_link  # a new link to the audit writer for each start
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        env = {**sdnotify.child_environment(dict(os.environ)), **self._env, PARENT_ENV: str(os.getpid())}
        link = self._audit_link.child_socket() if self._audit_link is not None else None
        if link is not None:
            env[FD_ENV] = str(link.fileno())
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(link.fileno(),) if link is not None else ())
        finally:
            if link is not None:
                link.close()  # the child has its copy
        eventlog.event(log, f"{self.role.replace('-', '_')}_process_started", pid=self._proc.pid)

    async def _supervise(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            assert self._proc is not None
            started = time.monotonic()
            code = await self._proc.wait()
            if self._stopping:
                return
            eventlog.event(log, f"{self.role.replace('-', '_')}_process_exited", logging.ERROR,
                           pid=self._proc.pid, code=code, restart_in=f"{backoff:.0f}s")
            if time.monotonic() - started > MAX_BACKOFF:
                backoff = MIN_BACKOFF
            await asyncio.sleep(backoff)  # a restart backoff, not synchronisation
            backoff = min(backoff * 2, MAX_BACKOFF)
            await self._spawn()

    def reload(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)

    async def stop(self, timeout: float) -> None:
        """SIGTERM (the child drains its deliveries), then SIGKILL if it outlives `timeout`."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), timeout + 5)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


DeliveryProcess = ChildProcess  # the delivery child is the default role


