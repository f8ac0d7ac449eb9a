"""`scripts/bench dlp`: how fast DLP scans a realistic mix of messages, and what it costs at ingest.

The mix (synthetic, built with the test builders): 60% 5 KB text notes, 20% 50 KB HTML
newsletters, 15% 500 KB messages with a DOCX, a PDF and a text file attached, 5% 1 MB messages (as
sent; 8 MB of text inflated) with a 20,000-row XLSX export and a zip of logs; a third of them
carry identifiers. Reported:

1. the scanner alone, one process: messages/s and MB/s per class and for the mix;
2. the scan worker pool (`dlp.workers`, default 2) fed from an event loop: messages/s for the mix;
3. end to end over SMTP: the mix sent by 10 concurrent sessions to the gateway with the shipped
   policies, against the same gateway with `dlp.enabled: false`, each after one untimed message
   of each class; the ratio is the cost of DLP.

Bounded: a fixed number of messages per part, every wait has a deadline. Loopback only.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.stages.dlp.scanner import ScanRequest, scan_message  # noqa: E402
from gateway.stages.dlp.scanpool import ScanPool  # noqa: E402
from gateway.stages.dlp.stage import dlp_settings  # noqa: E402
from tests.stages.dlp import builders as b  # noqa: E402

WORDS = ["patient", "follow", "up", "visit", "results", "normal", "continue", "plan", "call", "office",
         "schedule", "review", "lab", "blood", "pressure", "medication", "refill", "insurance", "claim",
         "referral", "appointment"]


def prose(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))


def identifiers(rng: random.Random) -> str:
    return rng.choice(["", "", f"SSN 2{rng.randint(10, 99)}-45-6789, DOB: 03/04/1971",
                       "MRN: 0012345678, diagnosis E11.9"])


def make_mix(rng: random.Random) -> dict[str, list[bytes]]:
    def note() -> bytes:
        return b.message(prose(rng, 5000) + identifiers(rng), subject="Visit note")

    def html() -> bytes:
        text = prose(rng, 25000)
        paragraphs = "".join(f"<p><b>{line}</b></p>" for line in text.split("\n"))
        return b.message(text, html=f"<html><body>{paragraphs}{identifiers(rng)}</body></html>")

    def documents() -> bytes:
        return b.message("see attached", attachments=[
            ("chart.docx", b.docx([*prose(rng, 150000).split("\n"), identifiers(rng)]),
             "application/octet-stream"),
            ("referral.pdf", b.pdf(prose(rng, 20000).split("\n")[:60]), "application/pdf"),
            ("scan.txt", (prose(rng, 200000) + identifiers(rng)).encode(), "text/plain")])

    def export() -> bytes:
        rows = [[f"row {i}", prose(rng, 60)] for i in range(20000)]
        return b.message("export", attachments=[
            ("export.xlsx", b.xlsx(rows), "application/octet-stream"),
            ("logs.zip", b.archive({f"log{i}.txt": prose(rng, 400000) for i in range(4)}),
             "application/zip")])

    classes: dict[str, tuple[Callable[[], bytes], int]] = {
        "text 5KB": (note, 60), "html 50KB": (html, 20), "docs 500KB": (documents, 15),
        "export 1MB": (export, 5)}
    return {name: [make() for _ in range(count)] for name, (make, count) in classes.items()}


def scanner_alone(mix: dict[str, list[bytes]], request: ScanRequest) -> None:
    # Compiling the detectors and loading the vocabulary happens once per policy version (at
    # start and reload), not per message: timed on its own, not charged to the first class.
    started = time.perf_counter()
    scan_message(b"Subject: warm-up\r\n\r\nnothing\r\n", request)
    print(f"\nscanner alone, one process (detectors prepared once: {time.perf_counter() - started:.2f} s):")
    print(f"{'class':<14}{'messages':>9}{'avg KB':>9}{'msg/s':>10}{'MB/s':>8}")
    total_bytes = total_seconds = 0.0
    count = 0
    for name, messages in mix.items():
        started = time.perf_counter()
        for raw in messages:
            scan_message(raw, request)
        seconds = time.perf_counter() - started
        size = sum(len(raw) for raw in messages)
        total_bytes += size
        total_seconds += seconds
        count += len(messages)
        print(f"{name:<14}{len(messages):>9}{size / len(messages) / 1024:>9.0f}"
              f"{len(messages) / seconds:>10.1f}{size / seconds / 1e6:>8.1f}")
    print(f"{'mix':<14}{count:>9}{total_bytes / count / 1024:>9.0f}{count / total_seconds:>10.1f}"
          f"{total_bytes / total_seconds / 1e6:>8.1f}")


async def pool_rate(messages: list[bytes], request: ScanRequest, workers: int) -> float:
    pool = ScanPool(workers)
    await pool.start()
    try:
        # Each worker prepares its detectors on its first scan: one large message each, untimed.
        large = max(messages, key=len)
        await asyncio.gather(*(pool.scan(large, request) for _ in range(workers)))
        started = time.perf_counter()
        await asyncio.gather(*(pool.scan(raw, request) for raw in messages))
        return len(messages) / (time.perf_counter() - started)
    finally:
        pool.close()


async def warm_up(port: int, mix: dict[str, list[bytes]]) -> None:
    """One message of each class, untimed: the scan workers start on the first large message
    and then stay (as they do in service); the timed run measures the steady state."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=120)
    await client.connect()
    for messages in mix.values():
        await client.sendmail("bench@clinic.example", ["rcpt@example.org"], messages[0])
    await client.quit()


async def send_all(port: int, messages: list[bytes], sessions: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in messages:
        queue.put_nowait(raw)

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=120)
        await client.connect()
        while not queue.empty():
            raw = queue.get_nowait()
            await client.sendmail("bench@clinic.example", ["rcpt@example.org"], raw)
        await client.quit()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(session() for _ in range(sessions))), 900)
    return len(messages) / (time.perf_counter() - started)


def run(mailward_gateway: Callable[..., object], wait_count: Callable[[Path, int], int]) -> None:
    rng = random.Random(7)  # noqa: S311 - synthetic content, not secrets
    print("building the message mix ...", file=sys.stderr)
    mix = make_mix(rng)
    messages = [raw for batch in mix.values() for raw in batch]
    rng.shuffle(messages)

    from gateway.config import load_config
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "c.yaml"
        config_file.write_text(f"policies_dir: {ROOT / 'policies'}\n")
        request = dlp_settings(load_config(config_file)).request
    scanner_alone(mix, request)
    rate = asyncio.run(pool_rate(messages, request, 2))
    print(f"\nscan pool, 2 worker processes: {rate:.1f} msg/s for the mix")

    rates = {}
    base = ROOT / "bench-out"
    base.mkdir(exist_ok=True)
    for name, dlp in (("dlp on", "{enabled: true}"), ("dlp off", "{enabled: false}")):
        with (tempfile.TemporaryDirectory(dir=base, prefix="dlp-") as tmp,
              mailward_gateway(Path(tmp), extra=f"policies_dir: {ROOT / 'policies'}\ndlp: {dlp}\n")
              as (port, incoming, _)):
            asyncio.run(warm_up(port, mix))
            wait_count(incoming, len(mix))
            rates[name] = asyncio.run(send_all(port, messages, 10))
            wait_count(incoming, len(mix) + len(messages))
    print(f"\nend to end over SMTP, {len(messages)} messages of the mix, 10 sessions, fsync before 250:")
    for name, value in rates.items():
        print(f"  {name:<8} {value:8.1f} msg/s")
    print(f"ratio dlp on/off: {rates['dlp on'] / rates['dlp off']:.2f}x")
