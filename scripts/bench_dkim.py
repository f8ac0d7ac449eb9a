"""`scripts/bench dkim`: DKIM signatures per second on a 5 KB message, against OpenSSL.

Mailward's whole signing step (`DkimSigner.sign`: From domain, CRLF check, relaxed
canonicalisation and body hash by dkimpy, the signature by OpenSSL through `cryptography`) for
RSA-2048, Ed25519 and both at once (dual); dkimpy's own `dkim.sign` (its RSA is pure Python) for
comparison; and the reference, `openssl speed` for bare RSA-2048 and Ed25519 signatures on the
same machine (no message work at all). One process, bounded counts.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dkim as dkimpy  # noqa: E402

from gateway.crypto import dkim  # noqa: E402
from gateway.delivery.signing import DkimSigner  # noqa: E402
from tests.dkimverify import make_key  # noqa: E402
from tests.stages.dlp import builders as b  # noqa: E402


async def signer_rate(signer: DkimSigner, content: bytes, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await signer.sign(content, "bench")
    return count / (time.perf_counter() - started)


def openssl_speed(algorithm: str) -> float:
    """Signatures per second that `openssl speed` reports for `algorithm` (rsa2048, ed25519)."""
    out = subprocess.run(["openssl", "speed", "-seconds", "3", algorithm], capture_output=True,
                         text=True, check=True).stdout
    line = next(line for line in out.splitlines()
                if ("rsa 2048 bits" in line if algorithm == "rsa2048" else "Ed25519)" in line))
    return float(re.findall(r"[\d.]+", line)[-2])


def run(messages: int = 5000) -> None:
    body = ("Your appointment on Tuesday is confirmed. Please arrive 10 minutes early.\n") * 68
    content = dkim.crlf(b.message(body, subject="Appointment", sender="clinic@example.com"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        algorithms: tuple[tuple[dkim.Algorithm, str], ...] = (("rsa-sha256", "r1"), ("ed25519-sha256", "e1"))
        keys = {alg: make_key(work, "example.com", name, alg) for alg, name in algorithms}
        loaded = {alg: dkim.SigningKey("example.com", k.selector, alg, dkim.load_key(k.key_file, alg))
                  for alg, k in keys.items()}
        rsa_pem = keys["rsa-sha256"].key_file.read_bytes()
        results = {
            "mailward RSA-2048": asyncio.run(signer_rate(
                DkimSigner({"example.com": [loaded["rsa-sha256"]]}), content, messages)),
            "mailward Ed25519": asyncio.run(signer_rate(
                DkimSigner({"example.com": [loaded["ed25519-sha256"]]}), content, messages)),
            "mailward dual": asyncio.run(signer_rate(
                DkimSigner({"example.com": list(loaded.values())}), content, messages)),
        }
        count = 100
        started = time.perf_counter()
        for _ in range(count):
            dkimpy.sign(content, b"r1", b"example.com", rsa_pem, canonicalize=(b"relaxed", b"relaxed"))
        results["dkimpy RSA-2048"] = count / (time.perf_counter() - started)
    reference = {"openssl speed rsa2048": openssl_speed("rsa2048"),
                 "openssl speed ed25519": openssl_speed("ed25519")}
    print(f"\ndkim: signatures of one {len(content) // 1024} KB message, one process, {messages} each")
    print(f"{'':<24}{'sig/s':>10}{'ms/msg':>10}")
    for name, value in {**results, **reference}.items():
        print(f"{name:<24}{value:10.0f}{1000 / value:10.3f}")
    print(f"ratio mailward/openssl: RSA-2048 "
          f"{results['mailward RSA-2048'] / reference['openssl speed rsa2048']:.2f}x, Ed25519 "
          f"{results['mailward Ed25519'] / reference['openssl speed ed25519']:.2f}x; "
          f"mailward/dkimpy RSA-2048 {results['mailward RSA-2048'] / results['dkimpy RSA-2048']:.0f}x")
