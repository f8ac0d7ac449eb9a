"""MX resolution against a real DNS server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.resolver import MxResolver, Permanent, Temporary
from gateway.typedyaml import HostPort
from tests.dnsserver import LoopbackDns, start_dns

RECORDS = {
    ("two-mx.test", "MX"): ["10 mx1.two-mx.test.", "20 mx2.two-mx.test."],
    ("mx1.two-mx.test", "A"): ["127.0.0.11"],
    ("mx2.two-mx.test", "A"): ["127.0.0.12"],
    ("equal.test", "MX"): ["10 a.equal.test.", "10 b.equal.test.", "10 c.equal.test."],
    ("a.equal.test", "A"): ["127.0.0.21"],
    ("b.equal.test", "A"): ["127.0.0.22"],
    ("c.equal.test", "A"): ["127.0.0.23"],
    ("implicit.test", "A"): ["127.0.0.31"],
    ("nullmx.test", "MX"): ["0 ."],
    ("alias.test", "CNAME"): ["real.test."],
    ("real.test", "MX"): ["5 mx.real.test."],
    ("mx.real.test", "A"): ["127.0.0.41"],
    ("noaddr.test", "TXT"): ["\"v=spf1 -all\""],
    ("brokenmx.test", "MX"): ["10 gone.brokenmx.test."],
}


@pytest.fixture
async def resolver() -> AsyncIterator[Callable[..., Any]]:
    servers: list[LoopbackDns] = []

    async def make(routes: dict[str, str] | None = None) -> tuple[MxResolver, LoopbackDns]:
        server, port = await start_dns("127.0.0.53", RECORDS, servfail=["servfail.test"])
        servers.append(server)
        mx = MxResolver((HostPort(f"127.0.0.53:{port}"),), 2525,
                        {k: HostPort(v) for k, v in (routes or {}).items()}, timeout=2)
        return mx, server

    yield make
    for server in servers:
        assert server.transport is not None
        server.transport.close()


async def test_mx_hosts_come_in_preference_order(resolver: Any) -> None:
    mx, _ = await resolver()
    found = await mx.destinations("two-mx.test")
    assert [(d.host, d.addresses, d.port) for d in found] == [
        ("mx1.two-mx.test", ("127.0.0.11",), 2525), ("mx2.two-mx.test", ("127.0.0.12",), 2525)]


async def test_equal_preferences_are_shuffled(resolver: Any) -> None:
    mx, _ = await resolver()
    orders = {tuple(d.host for d in await mx.destinations("equal.test")) for _ in range(40)}
    assert len(orders) > 1
    assert all(sorted(order) == ["a.equal.test", "b.equal.test", "c.equal.test"] for order in orders)


async def test_domain_without_mx_uses_its_address(resolver: Any) -> None:
    mx, _ = await resolver()
    [only] = await mx.destinations("implicit.test")
    assert (only.host, only.addresses) == ("implicit.test", ("127.0.0.31",))


async def test_null_mx_is_permanent(resolver: Any) -> None:
    mx, _ = await resolver()
    with pytest.raises(Permanent, match="null MX"):
        await mx.destinations("nullmx.test")


async def test_nxdomain_is_permanent(resolver: Any) -> None:
    mx, _ = await resolver()
    with pytest.raises(Permanent, match="NXDOMAIN") as info:
        await mx.destinations("no-such-domain.test")
    assert info.value.status == "5.1.2"


async def test_servfail_is_temporary(resolver: Any) -> None:
    mx, _ = await resolver()
    with pytest.raises(Temporary):
        await mx.destinations("servfail.test")


async def test_no_mx_and_no_address_is_permanent(resolver: Any) -> None:
    mx, _ = await resolver()
    with pytest.raises(Permanent, match="no MX and no address"):
        await mx.destinations("noaddr.test")


async def test_mx_host_without_address_is_temporary(resolver: Any) -> None:
    mx, _ = await resolver()
    with pytest.raises(Temporary, match="no address for any MX host"):
        await mx.destinations("brokenmx.test")


async def test_cname_chain_is_followed(resolver: Any) -> None:
    mx, _ = await resolver()
    [only] = await mx.destinations("alias.test")
    assert (only.host, only.addresses) == ("mx.real.test", ("127.0.0.41",))


async def test_answers_are_cached_for_their_ttl(resolver: Any) -> None:
    mx, server = await resolver()
    await mx.destinations("two-mx.test")
    asked = len(server.queries)
    await mx.destinations("two-mx.test")
    assert len(server.queries) == asked


async def test_route_overrides_mx(resolver: Any) -> None:
    mx, server = await resolver({"two-mx.test": "127.0.0.5:2526"})
    [only] = await mx.destinations("Two-MX.test")
    assert (only.host, only.addresses, only.port) == ("127.0.0.5", ("127.0.0.5",), 2526)
    assert server.queries == []
