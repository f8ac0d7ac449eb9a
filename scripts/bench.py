"""Benchmarks: Mailward and the reference (a throwaway Postfix) side by side in one run.

    scripts/bench ingest [--messages N] [--sessions S] [--size BYTES] [--latency-messages M]

ingest: Postfix's `smtp-source` sends N messages of SIZE bytes over S concurrent sessions to each
target in turn; the figure is messages per second from first connect until smtp-source has every
250. Both sides fsync each message before the 250 (Postfix's cleanup always does; Mailward's spool
does). The Postfix instance lives in a temporary directory with only the services that accepting
mail needs; it puts accepted mail on hold, so messages stay queued as they stay in Mailward's spool.
Then a probe client measures time-to-250 (from the end-of-data dot to the reply) per message at
the same concurrency, for p50/p99. Everything runs on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER, RECIPIENT = "bench@example.com", "rcpt@example.org"


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def count_files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def wait_count(directory: Path, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    count = count_files(directory)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = count_files(directory)
    return count


@contextmanager
def mailward_gateway(workdir: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    config = workdir / "mailward.yaml"
    config.write_text(
        f"hostname: bench.mailward.test\n"
        f"listeners: [{{address: 127.0.0.1, port: {port}, starttls: optional, auth: off}}]\n"
        f"relay: {{networks: [127.0.0.0/8]}}\n"
        f"limits: {{max_connections_per_ip: 1000, max_connections: 1000}}\n"
        f"metrics: {{listen: null}}\n"
        f"log_level: warning\n")
    with open(workdir / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port)
        yield port, workdir / "var" / "spool" / "incoming", proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


POSTFIX_MAIN = """\
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
compatibility_level = 3.6
maillog_file = {queue}/maillog
maillog_file_prefixes = {queue}
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
# Accepted mail is put on hold by cleanup, so it stays queued (as in Mailward's spool here) and
# qmgr has nothing to deliver; qmgr must still run, or cleanup stalls on its missing trigger.
smtpd_end_of_data_restrictions = check_client_access static:HOLD
"""

# Only what accepting mail needs: smtpd, cleanup, trivial-rewrite, qmgr and their helpers.
POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
proxymap  unix  - - n - - proxymap
anvil     unix  - - n - 1 anvil
qmgr      unix  n - n 300 1 qmgr
postlog   unix-dgram n - n - 1 postlogd
"""


@contextmanager
def postfix_instance(workdir: Path) -> Iterator[tuple[int, Path, None]]:
    port = free_port()
    workdir.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach their queue
    etc, queue, data = workdir / "etc", workdir / "queue", workdir / "data"
    for directory in (etc, queue, data):
        directory.mkdir(parents=True)
    shutil.chown(data, "postfix")
    (etc / "main.cf").write_text(POSTFIX_MAIN.format(queue=queue, data=data))
    (etc / "master.cf").write_text(POSTFIX_MASTER.format(port=port))
    env = {**os.environ, "MAIL_CONFIG": str(etc)}
    started = subprocess.run(["postfix", "-c", str(etc), "start"], env=env, capture_output=True,
                             text=True)
    if started.returncode != 0:
        log = queue / "maillog"
        detail = log.read_text()[-2000:] if log.exists() else started.stderr
        raise SystemExit(f"reference Postfix did not start: {started.stdout}{detail}")
    try:
        wait_listening(port)
        yield port, queue / "hold", None
    finally:
        subprocess.run(["postfix", "-c", str(etc), "stop"], env=env, check=False, capture_output=True)


def run_smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    started = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


async def probe_latency(port: int, messages: int, sessions: int, size: int) -> list[float]:
    """Time from the end-of-data dot to the 250, per message, over `sessions` connections."""
    body = (b"From: bench@example.com\r\nTo: rcpt@example.org\r\nSubject: latency probe\r\n\r\n"
            + (b"x" * 76 + b"\r\n") * (size // 78) + b".\r\n")
    samples: list[float] = []
    remaining = [messages]

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if not line or line[3:4] != b"-":
                return line

    async def session() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader)
        writer.write(b"EHLO probe.test\r\n")
        await reply(reader)
        while remaining[0] > 0:
            remaining[0] -= 1
            writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
            for _ in range(3):
                await reply(reader)
            writer.write(body[:-3])
            await writer.drain()
            started = time.perf_counter()
            writer.write(body[-3:])
            line = await reply(reader)
            samples.append(time.perf_counter() - started)
            if not line.startswith(b"250"):
                raise SystemExit(f"probe got {line!r}")
        writer.write(b"QUIT\r\n")
        await reply(reader)
        writer.close()

    await asyncio.wait_for(asyncio.gather(*(session() for _ in range(sessions))), 600)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def bench_ingest(args: argparse.Namespace) -> None:
    base = ROOT / "bench-out"
    base.mkdir(exist_ok=True)
    results = []
    for name, target in (("mailward", mailward_gateway), ("postfix", postfix_instance)):
        with (tempfile.TemporaryDirectory(dir=base, prefix=f"{name}-") as tmp,
              target(Path(tmp)) as (port, incoming, proc)):
            seconds = run_smtp_source(port, args.messages, args.sessions, args.size)
            stored = wait_count(incoming, args.messages)
            if stored < args.messages:
                raise SystemExit(f"{name}: only {stored} of {args.messages} messages queued")
            samples = asyncio.run(probe_latency(port, args.latency_messages, args.sessions,
                                                args.size))
            result = Result(name, args.messages, seconds, percentile(samples, 0.5),
                            percentile(samples, 0.99))
            if proc is not None:
                result.peak_rss_mb = peak_rss_mb(proc.pid)
            results.append(result)
    print(f"\ningest: {args.messages} messages of {args.size} bytes, {args.sessions} sessions "
          f"(smtp-source -d), fsync before 250 on both; time-to-250 over "
          f"{args.latency_messages} probe messages")
    print(f"{'':<10}{'msg/s':>10}{'seconds':>10}{'p50 ms':>10}{'p99 ms':>10}{'peak RSS MB':>13}")
    for r in results:
        rss = f"{r.peak_rss_mb:13.0f}" if r.peak_rss_mb else f"{'-':>13}"
        print(f"{r.name:<10}{r.rate:10.0f}{r.seconds:10.2f}{r.p50_ms:10.2f}{r.p99_ms:10.2f}{rss}")
    ours, reference = results
    print(f"ratio mailward/postfix: throughput {ours.rate / reference.rate:.2f}x, "
          f"p50 latency {ours.p50_ms / reference.p50_ms:.2f}x, "
          f"p99 latency {ours.p99_ms / reference.p99_ms:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    sub = parser.add_subparsers(dest="what", required=True)
    ingest = sub.add_parser("ingest", help="SMTP ingest rate and time-to-250 vs Postfix smtpd")
    ingest.add_argument("--messages", type=int, default=10000)
    ingest.add_argument("--sessions", type=int, default=20)
    ingest.add_argument("--size", type=int, default=5120)
    ingest.add_argument("--latency-messages", type=int, default=2000)
    args = parser.parse_args()
    if args.what == "ingest":
        bench_ingest(args)


if __name__ == "__main__":
    main()
