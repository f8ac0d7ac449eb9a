"""`scripts/bench crypto`: end-to-end encryption of 50 KB messages, messages per second.

Mailward's S/MIME (AES-256-CBC EnvelopedData for an RSA-2048 certificate, through cryptography)
and PGP/MIME (pysequoia, for a GnuPG-made RSA-3072 key), each including the MIME split and
reassembly, one process; beside them the command-line tools on the same message and key
(`openssl cms -encrypt -aes256`, `gpg --encrypt`) as the reference, whose rate includes starting
a process per message, as a gateway that shells out to them would pay. Bounded counts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.crypto import pgp, smime  # noqa: E402
from tests.crypto.keys import GnuPG, smime_identity  # noqa: E402
from tests.stages.dlp import builders as b  # noqa: E402

ADDRESS = "pat@example.org"


def rate(count: int, action: object) -> float:
    started = time.perf_counter()
    for _ in range(count):
        action()  # type: ignore[operator]
    return count / (time.perf_counter() - started)


def run(messages: int = 300, tool_messages: int = 30) -> None:
    body = ("Follow-up note, results attached. " * 40 + "\n") * 36  # ~50 KB
    raw = b.message(body, subject="Results", to=ADDRESS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        identity = smime_identity(work / "smime", ADDRESS)
        gnupg = GnuPG(work / "gnupg")
        gnupg.make_key(ADDRESS)
        gnupg.export(ADDRESS, work / "pgp" / "pat.asc")
        found = pgp.PgpKeyring(work / "pgp").find(ADDRESS)
        assert found is not None
        source = work / "m.eml"
        source.write_bytes(raw)
        results = {
            "S/MIME mailward": rate(messages, lambda: smime.encrypt(raw, identity.certificate, "Secure")),
            "S/MIME-GCM mailward": rate(messages, lambda: smime.encrypt_gcm(raw, identity.certificate,
                                                                           "Secure")),
            "S/MIME openssl cms": rate(tool_messages, lambda: subprocess.run(
                ["openssl", "cms", "-encrypt", "-aes256", "-in", str(source), "-out", str(work / "o.p7m"),
                 str(identity.cert_file)], check=True, capture_output=True)),
            "PGP mailward": rate(messages, lambda: pgp.encrypt(raw, found.certificate, "Secure")),
            "PGP gpg": rate(tool_messages, lambda: gnupg.run(
                "--armor", "--trust-model", "always", "--encrypt", "-r", ADDRESS, data=raw)),
        }
    print(f"\ncrypto: one {len(raw) // 1024} KB message encrypted for one recipient, one process")
    print(f"{'':<20}{'msg/s':>10}")
    for name, value in results.items():
        print(f"{name:<20}{value:>10.1f}")
    smime_ratio = results["S/MIME mailward"] / results["S/MIME openssl cms"]
    pgp_ratio = results["PGP mailward"] / results["PGP gpg"]
    print(f"ratio S/MIME mailward/openssl cms: {smime_ratio:.1f}x; PGP mailward/gpg: {pgp_ratio:.1f}x")
