"""MTA-STS (RFC 8461) end to end: our DNS server publishes the TXT record, an HTTPS server with a
test-CA certificate serves the policy, and receiving MX hosts have right- or wrong-name
certificates. Also the admin TLS policy map."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import pytest
from aiohttp import web

from gateway.resolver import MxResolver
from gateway.spool import QueueState
from gateway.transport import probe
from gateway.transport.tlspolicy import MtaSts, parse_policy
from gateway.typedyaml import HostPort
from tests.conftest import free_port, message, send
from tests.crypto.keys import openssl_decrypt, smime_identity
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually
from tests.stages.dlp import builders as b

POLICY_HOST = "127.0.0.30"


def records(policy_id: str = "20261130") -> dict[tuple[str, str], list[str]]:
    return {
        ("sts.test", "MX"): ["10 mx.sts.test."],
        ("mx.sts.test", "A"): ["127.0.0.24"],
        ("mta-sts.sts.test", "A"): [POLICY_HOST],
        ("_mta-sts.sts.test", "TXT"): [f'"v=STSv1; id={policy_id}"'],
    }


class PolicyServer:
    """HTTPS on POLICY_HOST serving /.well-known/mta-sts.txt, with a test-CA certificate."""

    def __init__(self, world: MailWorld) -> None:
        self.world = world
        self.port = free_port(POLICY_HOST)
        self.body = ""
        self.content_type = "text/plain"
        self.requests = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=self.body, content_type=self.content_type)

    async def start(self, body: str) -> None:
        self.body = body
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self.handle)
        self.runner, _ = await self.world.https(POLICY_HOST, "mta-sts.sts.test", app, self.port)

    async def stop(self) -> None:
        """Take the policy host away (as an attacker blocking it would)."""
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
def policy_server(world: MailWorld) -> PolicyServer:
    return PolicyServer(world)


def sts(mode: str, mx: str = "mx.sts.test") -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"


async def submit(gateway: object, body: bytes) -> None:
    code, text = await send(gateway.client(), SENDER, ["pat@sts.test"], body)  # type: ignore[attr-defined]
    assert code == 250, text


async def test_enforce_with_a_right_name_certificate_delivers_over_verified_tls(
        world: MailWorld, policy_server: PolicyServer, caplog: pytest.LogCaptureFixture) -> None:
    await world.start_dns(records())
    receiver = await world.sink("127.0.0.24", tls_name="mx.sts.test")
    await policy_server.start(sts("enforce"))
    gateway = await world.gateway(mta_sts_port=policy_server.port)
    with caplog.at_level(logging.INFO, logger="mailward.delivery"):
        await submit(gateway, message("STS-OK"))
        [received] = await eventually(lambda: receiver.messages)
        line = await eventually(lambda: next((r.getMessage() for r in caplog.records
                                              if "event=delivery " in r.getMessage()), None))
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "protection=tls-verified" in line and policy_server.requests == 1


async def test_enforce_with_a_wrong_name_certificate_never_sends_in_clear(
        world: MailWorld, policy_server: PolicyServer) -> None:
    await world.start_dns(records())
    receiver = await world.sink("127.0.0.24", tls_name="someone-else.test")
    await policy_server.start(sts("enforce"))
    gateway = await world.gateway(mta_sts_port=policy_server.port)
    await submit(gateway, message("STS-WRONG"))
    [queue_id] = await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []
    status = gateway.spool.load(queue_id, QueueState.DEFERRED).statuses[0]
    assert status.dsn == "4.7.5" and "not verified" in status.reply


async def test_testing_mode_does_not_block(world: MailWorld, policy_server: PolicyServer) -> None:
    await world.start_dns(records())
    receiver = await world.sink("127.0.0.24", tls_name="someone-else.test")
    await policy_server.start(sts("testing"))
    gateway = await world.gateway(mta_sts_port=policy_server.port)
    await submit(gateway, message("STS-TESTING"))
    [received] = await eventually(lambda: receiver.messages)
    assert received.tls_version is not None


async def test_mx_host_outside_the_policy_patterns_is_not_used(
        world: MailWorld, policy_server: PolicyServer) -> None:
    await world.start_dns(records())
    receiver = await world.sink("127.0.0.24", tls_name="mx.sts.test")
    await policy_server.start(sts("enforce", mx="*.elsewhere.test"))
    gateway = await world.gateway(mta_sts_port=policy_server.port)
    await submit(gateway, message("STS-PATTERN"))
    [queue_id] = await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []
    assert "no MX host matches the mta-sts policy" in \
        gateway.spool.load(queue_id, QueueState.DEFERRED).statuses[0].reply


async def test_protected_recipient_under_enforce_falls_to_smime(
        world: MailWorld, policy_server: PolicyServer, tmp_path: Path) -> None:
    await world.start_dns(records())
    receiver = await world.sink("127.0.0.24", tls_name="someone-else.test")
    await policy_server.start(sts("enforce"))
    identity = smime_identity(tmp_path / "keys" / "smime", "pat@sts.test")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: phi, action: encrypt, when: {detectors: {ssn: 1}}}]\n")
    gateway = await world.gateway({"policies_dir": str(tmp_path / "policies"), "dlp": {"workers": 0},
                                   "keys": {"smime_dir": str(tmp_path / "keys" / "smime")}},
                                  mta_sts_port=policy_server.port)
    await submit(gateway, b.message("SSN 219-45-6789", subject="Results", sender=SENDER, to="pat@sts.test"))
    [received] = await eventually(lambda: receiver.messages)
    assert b"219-45-6789" not in received.content
    assert b"219-45-6789" in openssl_decrypt(identity, received.content, tmp_path)


async def test_admin_policy_map_verify_overrides_a_missing_sts_policy(world: MailWorld) -> None:
    await world.start_dns({("sts.test", "MX"): ["10 mx.sts.test."], ("mx.sts.test", "A"): ["127.0.0.24"]})
    receiver = await world.sink("127.0.0.24", tls_name="someone-else.test")
    gateway = await world.gateway(tls_policy={"sts.test": "verify"})
    await submit(gateway, message("MAP-VERIFY"))
    await eventually(lambda: gateway.queued(QueueState.DEFERRED))
    assert receiver.messages == []


async def test_cached_policy_survives_a_stripped_txt_record_and_a_blocked_fetch(
        world: MailWorld, policy_server: PolicyServer) -> None:
    dns_server = await world.start_dns(records())
    await policy_server.start(sts("enforce"))
    resolver = MxResolver((HostPort(f"127.0.0.53:{world.dns_port}"),), 25, {})
    ca_file = world.tmp_path / "sts-ca.pem"
    world.ca.cert_pem.write_to_path(str(ca_file))
    mta_sts = MtaSts(resolver, port=policy_server.port, ca_file=str(ca_file), txt_recheck=0.0)
    first = await mta_sts.policy("sts.test")
    assert first is not None and first.mode == "enforce"
    del dns_server.records[("_mta-sts.sts.test", "TXT")]  # an attacker strips the record ...
    await policy_server.stop()  # ... and blocks the policy host
    again = await mta_sts.policy("sts.test")
    assert again == first


async def test_a_new_policy_id_fetches_the_policy_again(world: MailWorld,
                                                         policy_server: PolicyServer) -> None:
    dns_server = await world.start_dns(records("1"), ttl=0)
    await policy_server.start(sts("testing"))
    # Checked at every call, and the TXT answer (TTL 0) not kept: the new record is seen at once.
    resolver = MxResolver((HostPort(f"127.0.0.53:{world.dns_port}"),), 25, {}, min_cache_ttl=0.0)
    ca_file = world.tmp_path / "sts-ca.pem"
    world.ca.cert_pem.write_to_path(str(ca_file))
    mta_sts = MtaSts(resolver, port=policy_server.port, ca_file=str(ca_file), txt_recheck=0.0)
    assert (await mta_sts.policy("sts.test")).mode == "testing"  # type: ignore[union-attr]
    policy_server.body = sts("enforce")
    assert (await mta_sts.policy("sts.test")).mode == "testing"  # type: ignore[union-attr]
    dns_server.records[("_mta-sts.sts.test", "TXT")] = ['"v=STSv1; id=2"']
    assert (await mta_sts.policy("sts.test")).mode == "enforce"  # type: ignore[union-attr]
    assert policy_server.requests == 2


@pytest.mark.parametrize(("body", "problem"), [
    ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 10\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a\nmax_age: 10\n", "mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 10\n", "no mx"),
    ("version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n", "max_age"),
    ("<html>not a policy</html>", "key: value"),
])
def test_malformed_policies_are_refused(body: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_policy(body)


def test_policy_with_several_mx_patterns_parses() -> None:
    policy = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\n"
                          "mx: *.example.net\r\nmax_age: 604800\r\n")
    assert policy.mx == ("mx1.example.org", "*.example.net") and policy.max_age == 604800


async def test_tls_probe_reports_mx_certificate_and_policy(
        world: MailWorld, policy_server: PolicyServer) -> None:
    await world.start_dns(records())
    await world.sink("127.0.0.24", tls_name="someone-else.test")
    await policy_server.start(sts("enforce"))
    gateway = await world.gateway(mta_sts_port=policy_server.port, tls_policy={"other.test": "verify"})
    config = gateway.gateway.config
    report = await probe.probe(config, "sts.test")
    assert report["mta_sts"]["policy"] == {"mode": "enforce", "mx": ["mx.sts.test"], "max_age": 86400}
    assert report["requirement"] == {"level": "verify", "source": "mta-sts", "mx_patterns": ["mx.sts.test"]}
    [mx] = report["mx"]
    assert mx["host"] == "mx.sts.test" and mx["starttls"] is True and mx["verified"] is False
    assert mx["certificate"]["dns_names"] == ["someone-else.test"]
    assert "certificate NOT verified" in probe.as_text(report)
    assert report["policy_map"] is None and report["dane"] == "on" and mx["tlsa"] == []


async def test_tls_probe_command_prints_json(world: MailWorld, policy_server: PolicyServer) -> None:
    await world.start_dns(records())
    await world.sink("127.0.0.24", tls_name="mx.sts.test")
    await policy_server.start(sts("testing"))
    gateway = await world.gateway(mta_sts_port=policy_server.port)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "-c", str(gateway.gateway.config.source), "tls", "probe",
        "STS.test", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["mta_sts"]["policy"]["mode"] == "testing" and report["mx"][0]["verified"] is True


async def test_domains_without_a_policy_are_not_looked_up_for_every_message(world: MailWorld) -> None:
    dns_server = await world.start_dns({("nosts.test", "MX"): ["10 mx.nosts.test."],
                                        ("mx.nosts.test", "A"): ["127.0.0.24"]})
    receiver = await world.sink("127.0.0.24")
    gateway = await world.gateway()
    for marker in ("ONE", "TWO", "THREE"):
        await send(gateway.client(), SENDER, ["pat@nosts.test"], message(marker))
    await eventually(lambda: len(receiver.messages) == 3)
    assert dns_server.queries.count(("_mta-sts.nosts.test", "TXT")) == 1


async def test_routed_domain_ignores_its_mta_sts_policy(world: MailWorld,
                                                       policy_server: PolicyServer) -> None:
    dns_server = await world.start_dns(records())
    receiver = await world.sink("127.0.0.24", tls_name="someone-else.test")
    await policy_server.start(sts("enforce"))
    gateway = await world.gateway(mta_sts_port=policy_server.port,
                                  routes={"sts.test": f"127.0.0.24:{world.port}"})
    await submit(gateway, message("ROUTED"))
    await eventually(lambda: receiver.messages)  # the admin's route, opportunistic TLS
    assert ("_mta-sts.sts.test", "TXT") not in dns_server.queries


async def test_a_cached_policy_outlives_a_restart_against_a_stripped_txt_and_a_rogue_mx(
        world: MailWorld, policy_server: PolicyServer) -> None:
    dns_server = await world.start_dns(records())
    await policy_server.start(sts("enforce"))
    receiver = await world.sink("127.0.0.24", tls_name="mx.sts.test")
    rogue = await world.sink("127.0.0.25", tls_name="rogue.attacker.test")
    gateway = await world.gateway(mta_sts_port=policy_server.port)
    await submit(gateway, message("FIRST"))
    await eventually(lambda: receiver.messages)
    await gateway.gateway.drain()  # the gateway stops; the policy was cached on disk

    del dns_server.records[("_mta-sts.sts.test", "TXT")]  # an attacker strips the record,
    await policy_server.stop()  # blocks the policy host,
    dns_server.records[("sts.test", "MX")] = ["10 rogue.attacker.test."]  # and points MX at itself
    dns_server.records[("rogue.attacker.test", "A")] = ["127.0.0.25"]
    restarted = await world.gateway(mta_sts_port=policy_server.port)
    await submit(restarted, message("SECOND"))
    await eventually(lambda: restarted.queued(QueueState.DEFERRED), timeout=20)
    assert rogue.messages == [] and len(receiver.messages) == 1
