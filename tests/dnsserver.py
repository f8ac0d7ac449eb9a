"""A small authoritative DNS server on loopback for tests (UDP, dnspython wire format).

Records are given as {(name, type): [rdata, ...]}; a name with records of other types answers
NOERROR/no data, an unknown name NXDOMAIN, a name in `servfail` SERVFAIL. CNAMEs are followed
inside the answer, as a recursive resolver would. Names in `validated` are answered with the AD
bit (to queries that ask with DO or AD), as a validating resolver does for a signed zone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

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
