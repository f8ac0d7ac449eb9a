"""SPF evaluation (RFC 7208) as a receiver does it, over an in-memory zone."""

from __future__ import annotations

from gateway.dnscheck import spf


class Zone:
    def __init__(self, txt: dict[str, list[str]], a: dict[str, list[str]] | None = None,
                 mx: dict[str, list[str]] | None = None) -> None:
        self.txt_records, self.a, self.mx = txt, a or {}, mx or {}
        self.queries: list[str] = []

    async def txt(self, name: str) -> list[str]:
        self.queries.append(f"TXT {name}")
        return self.txt_records.get(name, [])

    async def addresses(self, name: str) -> list[str]:
        self.queries.append(f"A {name}")
        return self.a.get(name, [])

    async def exchangers(self, name: str) -> list[str]:
        self.queries.append(f"MX {name}")
        return self.mx.get(name, [])


async def test_ip4_ip6_and_all_decide_in_order() -> None:
    zone = Zone({"ex.test": ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all"]})
    assert (await spf.check_host(zone, "192.0.2.7", "ex.test")).result == "pass"
    assert (await spf.check_host(zone, "2001:db8::25", "ex.test")).result == "pass"
    outcome = await spf.check_host(zone, "198.51.100.1", "ex.test")
    assert (outcome.result, outcome.reason) == ("softfail", "~all in ex.test")


async def test_include_and_redirect_follow_other_records() -> None:
    zone = Zone({"ex.test": ["v=spf1 include:_spf.provider.test -all"],
                 "_spf.provider.test": ["v=spf1 ip4:203.0.113.5 -all"],
                 "sub.ex.test": ["v=spf1 redirect=ex.test"]})
    assert (await spf.check_host(zone, "203.0.113.5", "ex.test")).result == "pass"
    # The include's own -all does not end the outer evaluation: it is just "no match".
    assert (await spf.check_host(zone, "198.51.100.1", "ex.test")).reason == "-all in ex.test"
    outcome = await spf.check_host(zone, "203.0.113.5", "sub.ex.test")
    assert outcome.result == "pass" and outcome.lookups == 2


async def test_a_and_mx_with_prefix_lengths() -> None:
    zone = Zone({"ex.test": ["v=spf1 a/24 mx:other.test -all"]},
                a={"ex.test": ["192.0.2.10"], "mx1.other.test": ["198.51.100.20"]},
                mx={"other.test": ["mx1.other.test"]})
    assert (await spf.check_host(zone, "192.0.2.99", "ex.test")).result == "pass"
    assert (await spf.check_host(zone, "198.51.100.20", "ex.test")).result == "pass"
    assert (await spf.check_host(zone, "198.51.100.21", "ex.test")).result == "fail"


async def test_exists_expands_macros() -> None:
    zone = Zone({"ex.test": ["v=spf1 exists:%{ir}.%{l1r-}.allow.ex.test -all"]},
                a={"7.2.0.192.bounces.allow.ex.test": ["127.0.0.2"]})
    outcome = await spf.check_host(zone, "192.0.2.7", "ex.test", sender="bounces-x@ex.test")
    assert outcome.result == "pass", zone.queries


async def test_eleven_lookups_are_a_permerror_and_are_counted_in_full() -> None:
    includes = " ".join(f"include:s{i}.ex.test" for i in range(11))
    zone = Zone({"ex.test": [f"v=spf1 {includes} -all"],
                 **{f"s{i}.ex.test": [f"v=spf1 ip4:198.51.100.{i} -all"] for i in range(11)}})
    early = await spf.check_host(zone, "198.51.100.0", "ex.test")
    assert early.result == "pass"  # matched before the limit
    late = await spf.check_host(zone, "192.0.2.1", "ex.test")
    assert (late.result, late.reason) == ("permerror", "more than 10 DNS lookups")
    assert (await spf.lookups_needed(zone, "ex.test")).lookups == 11


async def test_two_records_a_loop_and_a_missing_include_are_permerrors() -> None:
    zone = Zone({"two.test": ["v=spf1 -all", "v=spf1 +all"],
                 "loop.test": ["v=spf1 include:loop.test -all"],
                 "dangling.test": ["v=spf1 include:nowhere.test -all"]})
    for domain in ("two.test", "loop.test", "dangling.test"):
        assert (await spf.check_host(zone, "192.0.2.1", domain)).result == "permerror", domain
    assert (await spf.check_host(zone, "192.0.2.1", "none.test")).result == "none"


async def test_more_than_two_void_lookups_are_a_permerror() -> None:
    zone = Zone({"ex.test": ["v=spf1 a:x1.ex.test a:x2.ex.test a:x3.ex.test -all"]})
    outcome = await spf.check_host(zone, "192.0.2.1", "ex.test")
    assert (outcome.result, outcome.void_lookups) == ("permerror", 3)
