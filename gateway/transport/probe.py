"""`mailward tls probe DOMAIN`: what the gateway knows and sees of a recipient domain's TLS.

The MX hosts and their addresses, the admin TLS policy entry, the MTA-STS record and policy (and
whether each MX host matches it), and for each MX host: whether it offers STARTTLS, the TLS
version and cipher, whether its certificate verifies for the MX name, and the certificate's
names and expiry, and its authenticated TLSA records (DANE) and whether the certificate matches
them. It connects and says EHLO and STARTTLS, then QUIT: no mail is sent.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import aiosmtplib
from cryptography import x509

from gateway.config import Config
from gateway.resolver import MxResolver, ResolutionError
from gateway.transport import dane, tlscache
from gateway.transport.peer import peer_chain, tls_contexts
from gateway.transport.tlspolicy import MtaSts, TlsPolicyMap


async def probe(config: Config, domain: str) -> dict[str, Any]:
    delivery = config.delivery
    domain = domain.lower().rstrip(".")
    resolver = MxResolver(delivery.nameservers, delivery.smtp_port, delivery.routes,
                          timeout=min(delivery.connect_timeout, 30.0))
    ca_file = str(delivery.ca_file) if delivery.ca_file else None
    mta_sts = MtaSts(resolver, port=delivery.mta_sts_port, ca_file=ca_file)
    policy_map = TlsPolicyMap(delivery.tls_policy, mta_sts if delivery.mta_sts else None)
    report: dict[str, Any] = {"domain": domain, "policy_map": policy_map.admin_level(domain),
                              "dane": "on" if delivery.dane else "off",
                              "learned": tlscache.load(delivery.tls_cache_file).get(domain, {})}
    report["mta_sts"] = await _mta_sts(resolver, mta_sts, domain)
    try:
        destinations = await resolver.destinations(domain)
    except ResolutionError as exc:
        report["error"] = exc.reason
        report["mx"] = []
        return report
    requirement = await policy_map.requirement(domain, destinations)
    report["requirement"] = {"level": requirement.level, "source": requirement.source or "default",
                             "mx_patterns": list(requirement.mx_patterns)}
    verifying, any_certificate = tls_contexts(ca_file)
    report["mx"] = []
    for destination in destinations:
        entry: dict[str, Any] = {"host": destination.host, "preference": destination.preference,
                                 "addresses": list(destination.addresses),
                                 "allowed_by_policy": requirement.allows(destination.host)}
        records = await resolver.tlsa(destination.host, destination.port) if delivery.dane else ()
        entry["tlsa"] = [f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in records]
        if destination.addresses:
            entry.update(await _probe_host(config.hostname, destination.host, destination.addresses[0],
                                           destination.port, verifying, any_certificate,
                                           float(delivery.connect_timeout)))
        chain = entry.pop("certificate_chain", [])
        if records:
            entry["dane_match"] = dane.authenticates(records, chain, destination.host)
        report["mx"].append(entry)
    return report


async def _mta_sts(resolver: MxResolver, mta_sts: MtaSts, domain: str) -> dict[str, Any]:
    try:
        records = [r for r in await resolver.txt(f"_mta-sts.{domain}") if r.startswith("v=STSv1")]
    except ResolutionError as exc:
        return {"txt": None, "error": exc.reason}
    found: dict[str, Any] = {"txt": records[0] if len(records) == 1 else records or None}
    if not records:
        return found
    try:
        policy = await mta_sts.fetch(domain)
    except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
        found["error"] = f"policy not fetched: {exc}"[:300]
        return found
    found["policy"] = {"mode": policy.mode, "mx": list(policy.mx), "max_age": policy.max_age}
    return found


async def _probe_host(ehlo: str, host: str, address: str, port: int, verifying: ssl.SSLContext,
                      any_certificate: ssl.SSLContext, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {"address": address}
    try:
        client = await _connect(ehlo, address, port, timeout)
    except (aiosmtplib.SMTPException, OSError) as exc:
        return {**found, "error": f"cannot connect: {exc}"[:200]}
    found["starttls"] = "starttls" in client.esmtp_extensions
    if not found["starttls"]:
        client.close()
        return found
    try:
        await client.starttls(tls_context=verifying, server_hostname=host)
        found["verified"] = True
    except ssl.SSLCertVerificationError as exc:
        found["verified"] = False
        found["verify_error"] = exc.verify_message
        client.close()
        client = await _connect(ehlo, address, port, timeout)
        try:
            await client.starttls(tls_context=any_certificate, server_hostname=host)
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as error:
            client.close()
            return {**found, "error": f"TLS handshake failed: {error}"[:200]}
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        client.close()
        return {**found, "verified": False, "error": f"TLS handshake failed: {exc}"[:200]}
    ssl_object = client.get_transport_info("ssl_object")
    if ssl_object is not None:
        found["tls_version"] = ssl_object.version()
        found["cipher"] = ssl_object.cipher()[0]
        chain = peer_chain(ssl_object)
        if chain:
            found["certificate"] = _certificate(x509.load_der_x509_certificate(chain[0]))
            found["certificate_chain"] = chain
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
    return found


async def _connect(ehlo: str, address: str, port: int, timeout: float) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname=address, port=port, start_tls=False, local_hostname=ehlo,
                             timeout=timeout)
    await client.connect()
    await client.ehlo()
    return client


def _certificate(certificate: x509.Certificate) -> dict[str, Any]:
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return {"subject": certificate.subject.rfc4514_string(), "dns_names": names,
            "issuer": certificate.issuer.rfc4514_string(),
            "not_after": certificate.not_valid_after_utc.isoformat(timespec="seconds")}


def as_text(report: dict[str, Any]) -> str:
    lines = [f"domain:        {report['domain']}",
             f"policy map:    {report['policy_map'] or '-'}"]
    sts = report["mta_sts"]
    if sts.get("policy"):
        policy = sts["policy"]
        lines.append(f"MTA-STS:       mode {policy['mode']}, mx {', '.join(policy['mx'])}, "
                     f"max_age {policy['max_age']}s")
    else:
        lines.append(f"MTA-STS:       {sts.get('error') or 'no policy published'}")
    lines.append(f"DANE:          {report['dane']} (TLSA records count only with the resolver's AD bit)")
    for host, seen in sorted(report.get("learned", {}).get("hosts", {}).items()):
        outcome = ("dane" if seen.get("dane") else "verified" if seen.get("verified") else
                   "unverified" if seen.get("starttls") else "no TLS")
        failure = f"; last failure: {seen['failure']}" if seen.get("failure") else ""
        lines.append(f"learned:       {host}: {seen.get('tls_version') or '-'} {outcome}{failure}")
    if "requirement" in report:
        requirement = report["requirement"]
        lines.append(f"requirement:   {requirement['level']} ({requirement['source']})")
    if report.get("error"):
        lines.append(f"MX lookup:     {report['error']}")
    for mx in report["mx"]:
        head = f"MX {mx['preference']:>3} {mx['host']} [{', '.join(mx['addresses'])}]"
        if not mx["allowed_by_policy"]:
            head += " (not allowed by the MTA-STS policy)"
        lines.append(head)
        if "error" in mx and "starttls" not in mx:
            lines.append(f"    {mx['error']}")
            continue
        if not mx.get("starttls"):
            lines.append("    STARTTLS:    not offered")
            continue
        verified = "verified" if mx.get("verified") else f"NOT verified ({mx.get('verify_error', '?')})"
        lines.append(f"    STARTTLS:    {mx.get('tls_version', '?')} {mx.get('cipher', '')}, "
                     f"certificate {verified}")
        if mx.get("tlsa"):
            match = "matches" if mx.get("dane_match") else "does NOT match"
            lines.append(f"    DANE:        {len(mx['tlsa'])} TLSA record(s); the certificate {match}")
        certificate = mx.get("certificate")
        if certificate:
            lines.append(f"    certificate: {', '.join(certificate['dns_names']) or certificate['subject']}; "
                         f"expires {certificate['not_after']}")
    return "\n".join(lines)


