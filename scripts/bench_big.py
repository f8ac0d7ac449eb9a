"""`scripts/bench big`: memory under large messages, Mailward beside Postfix in one run.

N clients send one message of S MB each at the same time (a short text part and a base64
attachment of random bytes, as a scanned referral or an imaging report arrives) through the relay
under test to Postfix's smtp-sink. A sampler reads the memory of every process of the relay (the
gateway's tree; Postfix's master and its children) every 50 ms. Reported: the idle memory
(after one small warm-up message has gone through, so every process is started), the peak
during, the growth as a multiple of the bytes in flight (N x S), the time until the sink has
them all, and the memory `--settle` seconds after the last one arrived.

Memory is the proportional set size (PSS, from /proc/PID/smaps_rollup): resident pages, each page
shared by k processes counted 1/k in each. Summed over the tree, a shared library or a page a
forked child shares with its parent counts once, so Postfix's many small processes are not
charged their libraries over and over (their summed RSS is about 10x their PSS).
"""

from __future__ import annotations

import argparse
import base64
import os
import smtplib
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SAMPLE_EVERY = 0.05
WARM = 2.0  # seconds after the warm-up message before the idle reading


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (children of every thread)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process. PSS is the proportional set size: resident pages, each shared
    page divided among its sharers."""
    found = {b"Rss:": 0.0, b"Pss:": 0.0}
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                key = line[:4]
                if key in found:
                    found[key] = int(line.split()[1]) / 1024
    except (OSError, IndexError, ValueError):
        pass
    return found[b"Rss:"], found[b"Pss:"]


def pss_mb(pid: int) -> float:
    return memory_mb(pid)[1]


def process_name(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode(errors="replace") for w in words[:4] if w)[-60:]


class MemorySampler:
    """Samples the memory of a process tree in a thread until stopped; keeps the peak of the
    sum (PSS, and RSS: both summed over the processes at the same instant) and of each process."""

    def __init__(self, root: Callable[[], int]) -> None:
        self._root = root
        self.peak = 0.0
        self.peak_rss = 0.0
        self.peaks: dict[int, float] = {}
        self.idle: dict[int, float] = {}  # the first reading of each process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        total = total_rss = 0.0
        for pid in tree_pids(self._root()):
            rss, size = memory_mb(pid)
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), size)
            self.idle.setdefault(pid, size)
            total += size
            total_rss += rss
        self.peak_rss = max(self.peak_rss, total_rss)
        return total

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.peak = max(self.peak, self.now())


def big_message(size_mb: float, sender: str, recipient: str, number: int) -> bytes:
    attachment = base64.encodebytes(os.urandom(int(size_mb * (1 << 20) * 3 / 4)))
    return (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: imaging report {number}\r\n"
            f"Message-ID: <big-{number}-{os.getpid()}@bench.test>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain\r\n\r\nThe report is attached.\r\n"
            f"--b\r\nContent-Type: application/octet-stream\r\n"
            f'Content-Disposition: attachment; filename="scan-{number}.bin"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n").encode() + \
        attachment.replace(b"\n", b"\r\n") + b"--b--\r\n"


@dataclass
class BigResult:
    name: str
    idle_mb: float
    peak_mb: float
    after_mb: float
    seconds: float


def send_all(port: int, messages: list[bytes], sender: str, recipient: str) -> None:
    def send(message: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
            client.sendmail(sender, [recipient], message)

    with ThreadPoolExecutor(max_workers=len(messages)) as pool:
        list(pool.map(send, messages))


def run(args: argparse.Namespace, mailward_gateway: Callable, postfix_instance: Callable,
        smtp_sink: Callable, relay_delivery: Callable, sender: str, recipient: str,
        sink_host: str, base: Path) -> None:
    messages = [big_message(args.size_mb, sender, recipient, n) for n in range(args.messages)]
    in_flight = sum(len(m) for m in messages) / (1 << 20)
    results = []
    for name in ("mailward", "postfix"):
        sink = smtp_sink()
        try:
            with tempfile.TemporaryDirectory(dir=base, prefix=f"big-{name}-") as tmp:
                if name == "mailward":
                    target = mailward_gateway(Path(tmp), relay_delivery(sink, args.messages))
                else:
                    target = postfix_instance(Path(tmp), (sink_host, sink.port),
                                              main_extra="message_size_limit = 0\n")
                with target as (port, _, proc):
                    if proc is not None:
                        def root(pid: int = proc.pid) -> int:
                            return pid
                    else:
                        pid_file = Path(tmp) / "queue" / "pid" / "master.pid"

                        def root(pid_file: Path = pid_file) -> int:
                            return int(pid_file.read_text().split()[0])
                    sampler = MemorySampler(root)
                    # Idle means ready and warm: one small message through first, so that every
                    # process is started (Mailward's scan worker, Postfix's smtpd, cleanup, smtp).
                    send_all(port, [big_message(0.01, sender, recipient, -1)], sender, recipient)
                    if not sink.wait_for(1, timeout=60):
                        raise SystemExit(f"{name}: the warm-up message did not arrive")
                    time.sleep(WARM)
                    sampler.idle.clear()
                    idle = sampler.now()
                    started = time.monotonic()
                    with sampler:
                        send_all(port, messages, sender, recipient)
                        if not sink.wait_for(args.messages + 1, timeout=600):
                            raise SystemExit(f"{name}: the sink got only {sink.count} of {args.messages}")
                        seconds = time.monotonic() - started
                    deadline = time.monotonic() + args.settle
                    while time.monotonic() < deadline:  # bounded: a fixed wait, then one reading
                        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    results.append(BigResult(name, idle, sampler.peak, sampler.now(), seconds))
                    if args.verbose:
                        for pid, peak in sorted(sampler.peaks.items(), key=lambda p: -p[1])[:8]:
                            print(f"  {name} {pid} {process_name(pid)}: idle {sampler.idle.get(pid, 0):.0f}, "
                                  f"peak {peak:.0f}, after {pss_mb(pid):.0f} MB")
        finally:
            sink.close()
    print(f"\nbig: {args.messages} concurrent messages of {args.size_mb:g} MB (base64 attachment), "
          f"{in_flight:.0f} MB in flight, relayed to smtp-sink on {sink_host}; memory (PSS) of all "
          f"processes, sampled every {SAMPLE_EVERY * 1000:.0f} ms")
    print(f"{'':<10}{'idle MB':>9}{'peak MB':>9}{'growth MB':>11}{'x in flight':>13}"
          f"{'seconds':>9}{f'after {args.settle:g}s MB':>16}{'vs idle':>9}")
    for r in results:
        growth = r.peak_mb - r.idle_mb
        print(f"{r.name:<10}{r.idle_mb:9.0f}{r.peak_mb:9.0f}{growth:11.0f}{growth / in_flight:13.2f}"
              f"{r.seconds:9.1f}{r.after_mb:16.0f}{(r.after_mb / r.idle_mb - 1) * 100:8.0f}%")
