"""Benchmarks: Mailward and the reference (a throwaway Postfix) side by side in one run.

    scripts/bench ingest [--messages N] [--sessions S] [--size BYTES] [--latency-messages M]
    scripts/bench relay [--messages N] [--sessions S] [--size BYTES] [--rounds R] [--plain] [--profile]
    scripts/bench relay --cluster [--messages N] [--sessions S] (see scripts/bench_cluster.py)
    scripts/bench dlp   (see scripts/bench_dlp.py)
    scripts/bench crypto (see scripts/bench_crypto.py)
    scripts/bench dkim (see scripts/bench_dkim.py)
    scripts/bench big [--messages N] [--size-mb S] [--settle SECONDS] (see scripts/bench_big.py)

Mailward runs with the shipped DLP policies (policies/), as it would be deployed, plus the one
rule an admin adds for a trusted destination (an `allow` rule for the sink's domain at the end,
as the shipped file shows): without it `protect: all` holds every message for want of verified
TLS or a portal, since smtp-sink speaks plain SMTP. Every detector and rule still runs.

relay: `smtp-source` sends N messages over S sessions into the relay under test, which delivers
them to Postfix's `smtp-sink` on another loopback address (127.0.0.20); the figure is end to end,
from the first connection until the sink has counted all N messages. Mailward routes the
recipient domain to the sink with `delivery.routes`, Postfix with `relayhost`; both fsync every
message before the 250. The peak memory of the gateway is reported: its processes' RSS summed
at the same instant, the highest such sum over the run (sampled every 50 ms), and the same for
PSS, which counts a page shared by processes (libraries, a forked child's) once.

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
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_big  # noqa: E402

from tests.postfix import free_port, postfix_instance, wait_listening  # noqa: E402

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
    peak_pss_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def count_files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def wait_count(directory: Path, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    count = count_files(directory)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = count_files(directory)
    return count


# Never beyond loopback: with no route, delivery would ask this (dead) resolver and defer.
NO_DNS = 'nameservers: ["127.0.0.1:9"]'


def bench_policies(workdir: Path) -> str:
    """The shipped policies with an `allow` rule for the bench recipient's domain appended."""
    import yaml

    directory = workdir / "policies"
    directory.mkdir(exist_ok=True)
    for source in sorted((ROOT / "policies").glob("*.yaml")):
        policy = yaml.safe_load(source.read_text())
        policy.setdefault("rules", []).append(
            {"name": "bench-sink", "when": {"recipients": [f"*@{RECIPIENT.partition('@')[2]}"]},
             "action": "allow"})
        (directory / source.name).write_text(yaml.safe_dump(policy, sort_keys=False))
    return f"policies_dir: {directory}\n"


def dkim_signing(workdir: Path) -> str:
    """Config lines that DKIM sign the bench sender's domain with a new RSA-2048 key (0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_file = workdir / "dkim.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    domain = SENDER.partition("@")[2]
    return f"domains: {{{domain}: {{dkim: [{{selector: s1, key_file: {key_file}}}]}}}}\n"


@contextmanager
def mailward_gateway(workdir: Path, delivery: str = f"{{paused: true, {NO_DNS}}}", extra: str = "",
                     address: str = "127.0.0.1") -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """The gateway with the shipped DLP policies (as deployed), plus `extra` config lines."""
    port = free_port(address)
    config = workdir / "mailward.yaml"
    config.write_text(
        f"hostname: bench.mailward.test\n"
        f"listeners: [{{address: {address}, port: {port}, starttls: optional, auth: off}}]\n"
        f"relay: {{networks: [127.0.0.0/8]}}\n"
        f"limits: {{max_connections_per_ip: 1000, max_connections: 1000}}\n"
        f"delivery: {delivery}\n"
        f"metrics: {{listen: null}}\n"
        f"log_level: warning\n"
        + (extra or bench_policies(workdir)))
    with open(workdir / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port, host=address)
        yield port, workdir / "var" / "spool" / "incoming", proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# Three pools; smtp-source's one sender lands in the default pool "a", whose three IPs share the
# connections by weight; a shaping rule for the sink's domain: limits that hold but do not bind.
POOLS_AND_SHAPING = (
    ", pools: {{a: {{ips: [{{address: 127.0.0.10, ehlo: a1.bench.test, weight: 2}}, "
    "{{address: 127.0.0.11, ehlo: a2.bench.test}}, {{address: 127.0.0.12, ehlo: a3.bench.test}}]}}, "
    "b: {{ips: [{{address: 127.0.0.13, ehlo: b.bench.test}}]}}, "
    "c: {{ips: [{{address: 127.0.0.14, ehlo: c.bench.test}}]}}}}, "
    "shaping: {{sink: {{domains: [example.org], max_connections: {sessions}, "
    "messages_per_connection: 100, per_minute: 1000000}}}}")

def run_smtp_source(port: int, messages: int, sessions: int, size: int, host: str = "127.0.0.1") -> float:
    started = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", SENDER, "-t", RECIPIENT, f"{host}:{port}"],
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


SINK_HOST = "127.0.0.20"


class SmtpSink:
    """Postfix's smtp-sink on SINK_HOST, with its running message counter read from stdout."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-c", "-u", "nobody",
                                      f"{SINK_HOST}:{self.port}", "1024"], stdout=subprocess.PIPE)
        self.count = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buffered = b""
        while chunk := self.proc.stdout.read1(65536):
            buffered += chunk
            *updates, buffered = buffered.split(b"\r")
            if updates:
                self.count = int(updates[-1].rpartition(b"mesg=")[2])

    def wait_for(self, expected: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count >= expected

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def plain_relay(workdir: Path) -> str:
    """Config lines for a bare relay: no DLP rules, audit off, no DKIM (the encrypted, fsync'd
    spool stays)."""
    return f"policies_dir: {workdir / 'no-policies'}\naudit: {{enabled: false}}\n"


def relay_delivery(sink: SmtpSink, sessions: int, extra: str = "") -> str:
    """The `delivery:` mapping that routes the bench recipient's domain to the sink."""
    return (f'{{{NO_DNS}, routes: {{"example.org": "{SINK_HOST}:{sink.port}"}}, '
            f"max_connections_per_destination: {sessions}{extra}}}")


def profile_relay(args: argparse.Namespace, base: Path) -> None:
    """One Mailward relay run with py-spy sampling all its processes: the CPU budget table.
    Sampling costs some throughput, so the rate printed here is not the benchmark figure."""
    import bench_profile

    sink = SmtpSink()
    try:
        with (tempfile.TemporaryDirectory(dir=base, prefix="relay-profile-") as tmp,
              mailward_gateway(Path(tmp), relay_delivery(sink, args.sessions),
                               plain_relay(Path(tmp)) if args.plain
                               else bench_policies(Path(tmp)) + dkim_signing(Path(tmp))) as (port, _, proc)):
            raw = Path(tmp) / "py-spy.txt"
            sampler = bench_profile.record(proc.pid, raw)
            started = time.monotonic()
            run_smtp_source(port, args.messages, args.sessions, args.size)
            if not sink.wait_for(args.messages, timeout=600):
                raise SystemExit(f"profile: the sink got only {sink.count} of {args.messages}")
            seconds = time.monotonic() - started
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=60)
            print(f"relay under the profiler: {args.messages / seconds:.0f} msg/s", file=sys.stderr)
            bench_profile.print_table(bench_profile.budget(raw), args.messages)
    finally:
        sink.close()


def bench_relay(args: argparse.Namespace) -> None:
    base = ROOT / "bench-out"
    base.mkdir(exist_ok=True)
    if args.profile:
        profile_relay(args, base)
        return
    if args.cluster:
        import bench_cluster

        bench_cluster.run(args, base)
        return
    contenders = ["mailward", "postfix"] + (["mailward-plain"] if args.plain else []) + \
        (["mailward-pools"] if args.pools else [])
    rounds: dict[str, list[Result]] = {name: [] for name in contenders}
    for name in contenders * args.rounds:  # alternated, so drift hits all alike
        sink = SmtpSink()
        try:
            with tempfile.TemporaryDirectory(dir=base, prefix=f"relay-{name}-") as tmp:
                if name.startswith("mailward"):
                    delivery = relay_delivery(sink, args.sessions,
                                              POOLS_AND_SHAPING.format(sessions=args.sessions)
                                              if name == "mailward-pools" else "")
                    # As shipped: the policies, the audit log and DKIM for the sender's domain;
                    # plain: none of them (a bare relay with the encrypted, fsync'd spool).
                    extra = (plain_relay(Path(tmp)) if name == "mailward-plain"
                             else bench_policies(Path(tmp)) + dkim_signing(Path(tmp)))
                    target = mailward_gateway(Path(tmp), delivery, extra)
                else:
                    target = postfix_instance(Path(tmp), (SINK_HOST, sink.port))
                with target as (port, _, proc):
                    sampler = bench_big.MemorySampler(lambda pid=proc.pid if proc else 0: pid)
                    started = time.monotonic()
                    with sampler if proc is not None else contextlib.nullcontext():
                        run_smtp_source(port, args.messages, args.sessions, args.size)
                        if not sink.wait_for(args.messages, timeout=600):
                            raise SystemExit(f"{name}: the sink got only {sink.count} of {args.messages}")
                    result = Result(name, args.messages, time.monotonic() - started)
                    if proc is not None:
                        result.peak_rss_mb, result.peak_pss_mb = sampler.peak_rss, sampler.peak
                    rounds[name].append(result)
                    print(f"{name}: {result.rate:.0f} msg/s", file=sys.stderr)
        finally:
            sink.close()
    # The median round of each (by rate) is the figure.
    results = [sorted(runs, key=lambda r: r.rate)[len(runs) // 2] for runs in rounds.values()]
    print(f"\nrelay: {args.messages} messages of {args.size} bytes, {args.sessions} sessions, "
          f"smtp-source -> relay -> smtp-sink on {SINK_HOST}, end to end, fsync on both"
          + (f"; median of {args.rounds} alternating rounds" if args.rounds > 1 else ""))
    print(f"{'':<18}{'msg/s':>10}{'seconds':>10}{'peak RSS MB':>13}{'peak PSS MB':>13}")
    for r in results:
        rss = f"{r.peak_rss_mb:13.0f}{r.peak_pss_mb:13.0f}" if r.peak_rss_mb else f"{'-':>13}{'-':>13}"
        print(f"{r.name:<18}{r.rate:10.0f}{r.seconds:10.2f}{rss}")
    ours, reference = results[0], results[1]
    print(f"ratio mailward/postfix: end-to-end throughput {ours.rate / reference.rate:.2f}x")
    by_name = {r.name: r for r in results}
    if args.plain:
        plain = by_name["mailward-plain"]
        print(f"ratio plain relay/postfix: {plain.rate / reference.rate:.2f}x; "
              f"full pipeline/plain: {ours.rate / plain.rate:.2f}x")
    if args.pools:
        print(f"ratio 3 pools + shaping / plain: {by_name['mailward-pools'].rate / ours.rate:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    sub = parser.add_subparsers(dest="what", required=True)
    ingest = sub.add_parser("ingest", help="SMTP ingest rate and time-to-250 vs Postfix smtpd")
    ingest.add_argument("--messages", type=int, default=10000)
    ingest.add_argument("--sessions", type=int, default=20)
    ingest.add_argument("--size", type=int, default=5120)
    ingest.add_argument("--latency-messages", type=int, default=2000)
    relay = sub.add_parser("relay", help="end to end through the relay to smtp-sink vs Postfix")
    relay.add_argument("--messages", type=int, default=20000)
    relay.add_argument("--sessions", type=int, default=20)
    relay.add_argument("--size", type=int, default=5120)
    relay.add_argument("--rounds", type=int, default=1, help="alternate the two this many times")
    relay.add_argument("--plain", action="store_true",
                       help="also run Mailward as a plain relay: no DLP rules, audit off, no DKIM "
                            "(with --profile: profile the plain relay)")
    relay.add_argument("--profile", action="store_true",
                       help="one Mailward run under py-spy: CPU us per message by stage and process")
    relay.add_argument("--cluster", action="store_true",
                       help="3 nodes sharing Redis and PostgreSQL beside one node, and the shared "
                            "state's round trips per message")
    relay.add_argument("--pools", action="store_true",
                       help="also run Mailward with 3 egress pools (127.0.0.10-12) and shaping on")
    sub.add_parser("dlp", help="DLP scan rate for a mix of message sizes, and its cost at ingest")
    sub.add_parser("crypto", help="S/MIME and PGP encryption of 50 KB messages vs openssl and gpg")
    sub.add_parser("dkim", help="DKIM signatures per second (RSA-2048, Ed25519) vs openssl speed")
    sub.add_parser("api", help="messages/s through the HTTP sending API beside SMTP ingest")
    big = sub.add_parser("big", help="peak RSS for N concurrent messages of S MB vs Postfix")
    big.add_argument("--messages", type=int, default=10)
    big.add_argument("--size-mb", type=float, default=25)
    big.add_argument("--settle", type=float, default=60,
                     help="seconds after the last delivery before memory is read again")
    big.add_argument("--verbose", action="store_true", help="also the peak of each process")
    args = parser.parse_args()
    if args.what == "ingest":
        bench_ingest(args)
    elif args.what == "relay":
        bench_relay(args)
    elif args.what == "crypto":
        import bench_crypto

        bench_crypto.run()
    elif args.what == "dkim":
        import bench_dkim

        bench_dkim.run()
    elif args.what == "big":
        import bench_big

        base = ROOT / "bench-out"
        base.mkdir(exist_ok=True)
        bench_big.run(args, mailward_gateway, postfix_instance, SmtpSink, relay_delivery, SENDER,
                      RECIPIENT, SINK_HOST, base)
    elif args.what == "api":
        import bench_api

        base = ROOT / "bench-out"
        base.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base, prefix="api-") as tmp:
            for part in ("bulk", "singles", "smtp"):
                (Path(tmp) / part).mkdir()
            bench_api.run(mailward_gateway, wait_count, run_smtp_source, free_port, Path(tmp))
    else:
        import bench_dlp

        bench_dlp.run(mailward_gateway, wait_count)


if __name__ == "__main__":
    main()
