"""A small authoritative DNS server on loopback for tests (UDP, dnspython wire format).

Records are given as {(name, type): [rdata, ...]}; a name with records of other types answers
NOERROR/no data, an unknown name NXDOMAIN, a name in `servfail` SERVFAIL. CNAMEs are followed
inside the answer, as a recursive resolver would. Names in `validated` are answered with the AD
bit (to queries that ask with DO or AD), as a validating resolver does for a signed zone.

`SignedZone` serves one zone signed here (RRSIGs, NSEC proofs) and `Unbound` runs Debian's
validating resolver in front of it, with the zone's key as trust anchor: the real thing for DANE.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class LoopbackDns(asyncio.DatagramProtocol):
    def __init__(self, records: dict[tuple[str, str], list[str]], *, servfail: Iterable[str] = (),
                 ttl: int = 300) -> None:
        self.records = {(name.lower().rstrip("."), rtype.upper()): values
                        for (name, rtype), values in records.items()}
        self.servfail = {name.lower().rstrip(".") for name in servfail}
        self.validated: set[str] = set()
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype))
        asks_for_dnssec = bool(query.flags & dns.flags.AD) or bool(query.ednsflags & dns.flags.DO)
        if name in self.validated and asks_for_dnssec:
            response.flags |= dns.flags.AD
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            for _ in range(8):  # follow a CNAME chain, bounded
                cname = self.records.get((name, "CNAME"))
                if cname and rtype != "CNAME":
                    response.answer.append(dns.rrset.from_text(name + ".", self.ttl, "IN", "CNAME", *cname))
                    name = cname[0].lower().rstrip(".")
                    continue
                values = self.records.get((name, rtype))
                if values:
                    response.answer.append(dns.rrset.from_text(name + ".", self.ttl, "IN", rtype, *values))
                break
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def start_dns(host: str, records: dict[tuple[str, str], list[str]], **kwargs: object
                    ) -> tuple[LoopbackDns, int]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: LoopbackDns(records, **kwargs), local_addr=(host, 0))  # type: ignore[arg-type]
    return protocol, transport.get_extra_info("sockname")[1]


class SignedZone(asyncio.DatagramProtocol):
    """An authoritative server for one DNSSEC-signed zone (signed here with dnspython, NSEC chain):
    answers with RRSIGs to queries with DO, and proves NODATA/NXDOMAIN with NSEC. A validating
    resolver (unbound) that has the zone's key as trust anchor sets the AD bit on its answers."""

    def __init__(self, origin: str, records: dict[tuple[str, str], list[str]], ttl: int = 300) -> None:
        import datetime

        import dns.dnssec
        import dns.zone
        from cryptography.hazmat.primitives.asymmetric import ec

        origin = origin.rstrip(".")
        self.origin = dns.name.from_text(origin)
        zone = dns.zone.Zone(self.origin, relativize=False)
        with zone.writer() as txn:
            txn.add(self.origin, dns.rdataset.from_text("IN", "SOA", ttl,
                                                        f"ns.{origin}. admin.{origin}. 1 3600 600 86400 60"))
            txn.add(self.origin, dns.rdataset.from_text("IN", "NS", ttl, f"ns.{origin}."))
            for (name, rtype), values in records.items():
                owner = dns.name.from_text(name)
                txn.add(owner, dns.rdataset.from_text("IN", rtype, ttl, *values))
        key = ec.generate_private_key(ec.SECP256R1())
        self.dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                             flags=257)
        now = datetime.datetime.now(datetime.UTC)
        dns.dnssec.sign_zone(zone, keys=[(key, self.dnskey)], inception=now - datetime.timedelta(hours=1),
                             expiration=now + datetime.timedelta(days=1))
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _with_signatures(self, section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: int,
                         dnssec: bool) -> None:
        rdataset = self.zone.get_rdataset(name, rdtype)
        if rdataset is None:
            return
        section.append(dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)))
        signatures = self.zone.get_rdataset(name, dns.rdatatype.RRSIG, rdtype)
        if dnssec and signatures is not None:
            section.append(dns.rrset.from_rdata_list(name, signatures.ttl, list(signatures)))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        dnssec = bool(query.ednsflags & dns.flags.DO)
        node = self.zone.get_node(name)
        if node is not None and self.zone.get_rdataset(name, rdtype) is not None:
            self._with_signatures(response.answer, name, rdtype, dnssec)
        else:
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self._with_signatures(response.authority, self.origin, dns.rdatatype.SOA, dnssec)
            for owner in self._nsec_owners(name, node is not None):
                self._with_signatures(response.authority, owner, dns.rdatatype.NSEC, dnssec)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(max_size=65535), addr)

    def _nsec_owners(self, name: dns.name.Name, exists: bool) -> list[dns.name.Name]:
        """NSEC records proving NODATA (the name's own) or NXDOMAIN (the one covering the name,
        and the one covering the wildcard at the zone apex)."""
        if exists:
            return [name]
        names = sorted(self.zone.nodes)
        owners = []
        for target in (name, dns.name.from_text("*", self.origin)):
            covering = max((n for n in names if n < target), default=names[-1])
            if covering not in owners:
                owners.append(covering)
        return owners


async def start_signed_zone(host: str, origin: str, records: dict[tuple[str, str], list[str]]
                            ) -> tuple[SignedZone, asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    server = SignedZone(origin, records)
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=(host, 0))
    return server, transport, transport.get_extra_info("sockname")[1]


UNBOUND_CONF = """\
server:
    interface: {host}
    port: {port}
    do-ip6: no
    do-tcp: no
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: ""
    logfile: ""
    use-syslog: no
    verbosity: 1
    do-daemonize: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    qname-minimisation: no
    harden-referral-path: no
    module-config: "validator iterator"
    trust-anchor: "{anchor}"
    val-log-level: 2
    local-zone: "test." nodefault
stub-zone:
    name: "{origin}"
    stub-addr: {zone_host}@{zone_port}
"""
UNBOUND_STUB = """stub-zone:
    name: "{origin}"
    stub-addr: {host}@{port}
"""


class Unbound:
    """Debian's unbound as the gateway's validating resolver, for one signed test zone."""

    def __init__(self, directory: Path, host: str, zone: SignedZone, zone_host: str, zone_port: int,
                 unsigned: dict[str, tuple[str, int]] | None = None) -> None:
        """`zone` is signed and its key is the trust anchor; `unsigned` zones (origin -> server)
        have none, so their answers are insecure: no AD bit."""
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.host = host
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "unbound.conf"
        origin = zone.origin.to_text()
        self.config.write_text(UNBOUND_CONF.format(
            host=host, port=self.port, directory=directory, anchor=f"{origin} DNSKEY {zone.dnskey.to_text()}",
            origin=origin, zone_host=zone_host, zone_port=zone_port)
            + "".join(UNBOUND_STUB.format(origin=name, host=server[0], port=server[1])
                      for name, server in (unsigned or {}).items()))
        self.log = directory / "unbound.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            binary = shutil.which("unbound") or "/usr/sbin/unbound"
            self.process = subprocess.Popen([binary, "-d", "-c", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT)

    def started(self) -> bool:
        """Whether unbound is serving (for a poll with a deadline); fails at once if it exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"unbound exited: {self.log.read_text()}")
        return "start of service" in self.log.read_text()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
