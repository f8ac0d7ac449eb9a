"""The budget table for `scripts/bench relay --profile`: microseconds per message in each stage and
process, from py-spy sampling every process of the gateway while the relay runs.

py-spy leaves out threads that sleep (waiting on a socket, a lock, the event loop's poll) but
counts a thread blocked in the kernel on the disk (fsync) as active, so a figure is CPU time plus
disk waits: for the spool and the audit log it is mostly fsync, which runs in executor threads
beside the event loop and overlaps other work. Each sample goes to the stage of the innermost frame that
belongs to one (a fsync called by the spool counts as spool; a log line formatted during delivery
as logging); what matches none is the event loop and the rest of the interpreter ("other").
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

RATE = 250  # samples per second per thread: small overhead, thousands of samples per stage

# (stage, pattern on a frame's "function (file:line)"), innermost match wins; order breaks ties
# only within one frame.
STAGES: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(pattern)) for name, pattern in [
    ("logging", r"\((?:.*/logging/|.*gateway/eventlog\.py)"),
    ("metrics", r"\((?:.*prometheus_client/|.*gateway/metrics\.py)"),
    ("audit", r"\(.*gateway/audit/"),
    ("DKIM", r"\((?:.*/dkim/|.*gateway/crypto/dkim\.py|.*gateway/delivery/signing\.py)"),
    ("DLP", r"\(.*gateway/(?:stages/|pipeline\.py|workers\.py)"),
    ("spool encrypt+write+fsync", r"\((?:.*gateway/spool/|.*gateway/durable\.py|.*cryptography/)"),
    ("SMTP client", r"\((?:.*aiosmtplib/|.*gateway/delivery/(?:client|connections)\.py"
                    r"|.*gateway/transport/peer\.py)"),
    ("scheduler", r"\((?:.*gateway/(?:delivery|transport|reputation)/|.*gateway/resolver\.py)"),
    ("SMTP server", r"\((?:.*aiosmtpd/|.*gateway/ingress/)"),
    ("message parsing", r"\((?:.*/email/|.*gateway/message\.py)"),
]]
PROCESS = re.compile(r"^process (\d+):\"([^\"]*)\"")
# Innermost frames of a thread that waits for something to do: a pool thread for work, the event
# loop for events. py-spy counts some of them as active; they are no part of a message's cost.
IDLE = re.compile(r"^(?:_worker \(.*concurrent/futures/thread\.py|\w*Selector\.select \(.*selectors\.py"
                  r"|Condition\.wait \(.*threading\.py)")


def record(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """Start sampling `pid` and its children (stops when they exit, or by SIGINT)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                             "--subprocesses", "--nonblocking", "--rate", str(RATE), "--format", "raw",
                             "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def role(cmdline: str) -> str:
    if "multiprocessing" in cmdline:
        return "DLP workers"  # the scan pool's processes (spawned)
    if "--role delivery" in cmdline:
        return "delivery"
    return "ingest"  # the main process and extra ingest processes


def stage(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    return "other"


def budget(raw: Path) -> dict[tuple[str, str], int]:
    """Samples per (process role, stage) from py-spy's raw (collapsed stack) output."""
    samples: dict[tuple[str, str], int] = defaultdict(int)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        # A child's stack starts with its ancestors' process frames, then its own.
        processes = [i for i, frame in enumerate(frames) if PROCESS.match(frame)]
        who = "ingest"
        if processes:
            match = PROCESS.match(frames[processes[-1]])
            assert match is not None
            who = role(match.group(2))
            frames = frames[processes[-1] + 1:]
        if frames and IDLE.match(frames[-1]):
            continue
        samples[(who, stage(frames))] += int(count)
    return samples


def print_table(samples: dict[tuple[str, str], int], messages: int) -> None:
    roles = sorted({who for who, _ in samples}, key=["ingest", "DLP workers", "delivery"].index)
    stages = [name for name, _ in STAGES] + ["other"]

    def micros(count: int) -> float:
        return count / RATE / messages * 1e6

    print(f"\nbudget: microseconds per message on the CPU or waiting on the disk, idle waits left "
          f"out (py-spy, {RATE} Hz, {messages} messages)")
    print(f"{'stage':<28}" + "".join(f"{r:>13}" for r in roles) + f"{'total':>10}")
    for name in stages:
        row = [samples.get((r, name), 0) for r in roles]
        if not any(row):
            continue
        print(f"{name:<28}" + "".join(f"{micros(c):13.0f}" for c in row) + f"{micros(sum(row)):10.0f}")
    totals = [sum(c for (r, _), c in samples.items() if r == who) for who in roles]
    print(f"{'all':<28}" + "".join(f"{micros(c):13.0f}" for c in totals) + f"{micros(sum(totals)):10.0f}")
