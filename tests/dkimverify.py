"""DKIM for tests: keys with their DNS records, and two verifiers that are not dkimpy.

- mailauth (Node.js, tests/verifiers): RSA and Ed25519 (RFC 8463);
- Debian's Mail::DKIM (Perl): RSA only in Debian 12's version.

Both query the test DNS server; they run as subprocesses without blocking the event loop that
serves that DNS server.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.crypto import dkim
from gateway.keyfiles import write_secret

VERIFIERS = Path(__file__).parent / "verifiers"


@dataclass(frozen=True)
class PublishedKey:
    domain: str
    selector: str
    algorithm: dkim.Algorithm
    key_file: Path
    record: str  # the TXT record's text

    @property
    def config(self) -> dict[str, Any]:
        return {"selector": self.selector, "key_file": str(self.key_file), "algorithm": self.algorithm}

    @property
    def dns(self) -> tuple[tuple[str, str], list[str]]:
        """The (name, type), [rdata] entry for the test DNS server (strings of <= 255 bytes)."""
        chunks = [self.record[i:i + 255] for i in range(0, len(self.record), 255)]
        return (f"{self.selector}._domainkey.{self.domain}", "TXT"), [" ".join(f'"{c}"' for c in chunks)]


def make_key(directory: Path, domain: str, selector: str,
             algorithm: dkim.Algorithm = "rsa-sha256") -> PublishedKey:
    key = dkim.generate_key(algorithm)
    path = directory / f"{domain}.{selector}.pem"
    write_secret(path, dkim.key_pem(key))
    return PublishedKey(domain, selector, algorithm, path, dkim.txt_record(key))


async def _run(*command: str) -> bytes:
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out


async def mailauth(content: bytes, dns_port: int, tmp_path: Path,
                   host: str = "127.0.0.53") -> list[dict[str, str]]:
    """Per signature: domain, selector, algorithm, result ("pass", "fail", "neutral"...), comment."""
    path = tmp_path / "to-verify.eml"
    path.write_bytes(content)
    out = await _run("node", str(VERIFIERS / "dkim-verify.js"), str(path), f"{host}:{dns_port}")
    results: list[dict[str, str]] = json.loads(out)["results"]
    return results


async def mail_dkim(content: bytes, dns_port: int, tmp_path: Path, host: str = "127.0.0.53") -> list[str]:
    """Per signature: "domain selector algorithm result", from Mail::DKIM."""
    path = tmp_path / "to-verify-perl.eml"
    path.write_bytes(content)
    out = await _run("perl", str(VERIFIERS / "dkim-verify.pl"), str(path), host, str(dns_port))
    return out.decode().splitlines()
