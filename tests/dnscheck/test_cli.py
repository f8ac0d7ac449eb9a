"""`mailward dns check` against a test DNS server: a healthy domain passes; a broken SPF (too
many lookups) and a wrong DKIM key are both reported with what to fix, as text and as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.conftest import write_config
from tests.dkimverify import PublishedKey, make_key
from tests.dnsserver import start_dns

DNS_HOST = "127.0.0.54"


async def dns_check(tmp_path: Path, records: dict[tuple[str, str], list[str]], keys: list[PublishedKey],
                    *args: str) -> tuple[int, str]:
    server, port = await start_dns(DNS_HOST, records)
    config = write_config(tmp_path, {
        "delivery": {"nameservers": [f"{DNS_HOST}:{port}"]},
        "domains": {"hospital.test": {"dkim": [key.config for key in keys]}}})
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "-c", str(config), "dns", "check", "hospital.test", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        assert server.transport is not None
        server.transport.close()
    assert process.returncode is not None
    return process.returncode, out.decode()


def healthy(keys: list[PublishedKey]) -> dict[tuple[str, str], list[str]]:
    return {
        ("hospital.test", "TXT"): ['"v=spf1 ip4:127.0.0.10 include:_spf.relay.test -all"'],
        ("_spf.relay.test", "TXT"): ['"v=spf1 ip4:127.0.0.11 -all"'],
        ("_dmarc.hospital.test", "TXT"): ['"v=DMARC1; p=reject; rua=mailto:dmarc@hospital.test"'],
        ("_smtp._tls.hospital.test", "TXT"): ['"v=TLSRPTv1; rua=mailto:tlsrpt@hospital.test"'],
        **dict(key.dns for key in keys)}


async def test_a_healthy_domain_passes_every_check(tmp_path: Path) -> None:
    keys = [make_key(tmp_path, "hospital.test", "s1"),
            make_key(tmp_path, "hospital.test", "e1", "ed25519-sha256")]
    code, out = await dns_check(tmp_path, healthy(keys), keys, "--ip", "127.0.0.10", "--ip", "127.0.0.11")
    assert code == 0, out
    assert "ok     s1._domainkey.hospital.test: rsa-sha256 key matches" in out
    assert "ok     e1._domainkey.hospital.test: ed25519-sha256 key matches" in out
    assert "ok     127.0.0.11 passes (include:_spf.relay.test in hospital.test)" in out
    assert "ok     DKIM d=hospital.test aligns with From hospital.test (relaxed)" in out
    assert "0 error(s)" in out


async def test_too_many_spf_lookups_and_a_wrong_dkim_key_are_both_reported(tmp_path: Path) -> None:
    key = make_key(tmp_path, "hospital.test", "s1")
    other = make_key(tmp_path / "elsewhere", "hospital.test", "s1")
    includes = " ".join(f"include:s{i}.spf.test" for i in range(11))
    records = {**healthy([other]),
               ("hospital.test", "TXT"): [f'"v=spf1 ip4:127.0.0.10 {includes} -all"'],
               **{(f"s{i}.spf.test", "TXT"): [f'"v=spf1 ip4:198.51.100.{i} -all"'] for i in range(11)}}
    code, out = await dns_check(tmp_path, records, [key], "--ip", "127.0.0.10", "--ip", "127.0.0.12")
    assert code == 1, out
    assert "error  s1._domainkey.hospital.test: the published key is not the one in" in out
    assert f'fix: publish s1._domainkey.hospital.test TXT "{key.record}"' in out
    assert "error  the SPF record needs 11 DNS lookups" in out
    assert "error  127.0.0.12 gets permerror (more than 10 DNS lookups)" in out

    code, out = await dns_check(tmp_path, records, [key], "--json")
    report = json.loads(out)
    assert code == 1 and report["errors"] == 2
    assert {(f["check"], f["status"]) for f in report["findings"]} >= {("dkim", "error"), ("spf", "error")}


async def test_missing_records_say_what_to_publish(tmp_path: Path) -> None:
    key = make_key(tmp_path, "hospital.test", "s1")
    code, out = await dns_check(tmp_path, {("hospital.test", "A"): ["127.0.0.10"]}, [key],
                                "--ip", "127.0.0.10")
    assert code == 1
    assert "error  s1._domainkey.hospital.test: no DKIM record" in out
    assert 'fix: publish hospital.test TXT "v=spf1 ip4:127.0.0.10 -all"' in out
    assert "error  no DMARC record at _dmarc.hospital.test" in out
    assert "info   no MTA-STS record" in out
