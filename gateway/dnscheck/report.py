"""The checks of `mailward dns check DOMAIN`, each a list of findings (ok, info, warn, error) with
the record to publish or the change to make. Nothing here changes DNS or the config."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from gateway.config import Config, DkimKeyConfig
from gateway.crypto import dkim
from gateway.delivery.signing import nearest_domain
from gateway.dnscheck import spf
from gateway.resolver import MxResolver, Permanent, ResolutionError
from gateway.transport.tlspolicy import MtaSts

Status = Literal["ok", "info", "warn", "error"]


@dataclass(frozen=True)
class Finding:
    check: str  # dkim, spf, dmarc, mta-sts, tls-rpt
    status: Status
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)


class ResolverDns:
    """`spf.SpfDns` over the gateway's resolver: no-such-name is a void answer, not an error."""

    def __init__(self, resolver: MxResolver) -> None:
        self.resolver = resolver

    async def txt(self, name: str) -> list[str]:
        return await _answer(self.resolver.txt(name))

    async def addresses(self, name: str) -> list[str]:
        return await _answer(self.resolver.addresses(name))

    async def exchangers(self, name: str) -> list[str]:
        return await _answer(self.resolver.exchangers(name))


async def _answer(lookup: Awaitable[list[str]]) -> list[str]:
    """A lookup's records; none for a name that does not exist; SpfTempError when DNS fails."""
    try:
        return await lookup
    except Permanent:
        return []
    except ResolutionError as exc:
        raise spf.SpfTempError(exc.reason) from None


def tags(record: str) -> dict[str, str]:
    """A tag=value list (DKIM, DMARC, MTA-STS, TLS-RPT records), names lowercased."""
    found = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            found[name.strip().lower()] = re.sub(r"\s+", "", value) if name.strip().lower() == "p" \
                else value.strip()
    return found


async def check_domain(config: Config, resolver: MxResolver, domain: str,
                       egress_ips: Sequence[str]) -> list[Finding]:
    domain = domain.lower().rstrip(".")
    dns = ResolverDns(resolver)
    signing = nearest_domain(config.domains, domain)
    findings = await check_dkim(config, dns, domain, signing)
    findings += await check_spf(dns, domain, egress_ips)
    findings += await check_dmarc(dns, domain, signing)
    findings += await check_mta_sts(config, resolver, dns, domain)
    findings += await check_tls_rpt(dns, domain)
    return findings


async def check_dkim(config: Config, dns: ResolverDns, domain: str, signing: str | None) -> list[Finding]:
    if signing is None:
        return [Finding("dkim", "error", f"no DKIM key is configured for {domain}: its mail goes out "
                                         "unsigned",
                        f"mailward keygen dkim {domain} --selector s1, then add it under domains: "
                        f"{domain}: dkim: in the config")]
    findings = []
    if signing != domain:
        findings.append(Finding("dkim", "info", f"mail from {domain} is signed as {signing} (d={signing})"))
    for key in config.domains[signing].dkim:
        findings.append(await _check_key(dns, signing, key))
    return findings


async def _check_key(dns: ResolverDns, domain: str, key: DkimKeyConfig) -> Finding:
    name = f"{key.selector}._domainkey.{domain}"
    role = "active" if key.active else "retired, still published"
    try:
        expected = dkim.txt_record(dkim.load_key(key.key_file, key.algorithm))
    except dkim.DkimKeyError as exc:
        return Finding("dkim", "error", f"{name}: cannot read the key: {exc}")
    publish = f'{name} TXT "{expected}"'
    try:
        records = [tags(r) for r in await dns.txt(name)]
    except spf.SpfTempError as exc:
        return Finding("dkim", "error", f"{name}: DNS lookup failed: {exc}")
    records = [r for r in records if "p" in r]
    if not records:
        return Finding("dkim", "error", f"{name}: no DKIM record ({role} {key.algorithm} key)",
                       f"publish {publish}")
    if len(records) > 1:
        return Finding("dkim", "error", f"{name}: {len(records)} DKIM records; receivers may pick any",
                       f"keep only {publish}")
    published, wanted = records[0], tags(expected)
    if not published["p"]:
        return Finding("dkim", "error", f"{name}: the key is revoked in DNS (empty p=) but configured "
                                        f"as {role}", f"publish {publish}, or remove the key from the config")
    if published.get("k", "rsa").lower() != wanted["k"] or published["p"] != wanted["p"]:
        return Finding("dkim", "error", f"{name}: the published key is not the one in {key.key_file}",
                       f"publish {publish}")
    return Finding("dkim", "ok", f"{name}: {key.algorithm} key matches {key.key_file} ({role})")


async def check_spf(dns: ResolverDns, domain: str, egress_ips: Sequence[str]) -> list[Finding]:
    try:
        records = [r for r in await dns.txt(domain) if r.lower().startswith("v=spf1")]
    except spf.SpfTempError as exc:
        return [Finding("spf", "error", f"{domain}: DNS lookup failed: {exc}")]
    allow = " ".join(f"ip{6 if ':' in ip else 4}:{ip}" for ip in egress_ips) or "ip4:YOUR.EGRESS.IP"
    if not records:
        return [Finding("spf", "error", f"{domain} publishes no SPF record",
                        f'publish {domain} TXT "v=spf1 {allow} -all"')]
    findings = []
    if len(records) > 1:
        findings.append(Finding("spf", "error", f"{domain} publishes {len(records)} SPF records; receivers "
                                                "answer permerror", "merge them into one record"))
    needed = await spf.lookups_needed(dns, domain)
    if needed.lookups > spf.LOOKUP_LIMIT:
        findings.append(Finding(
            "spf", "error", f"the SPF record needs {needed.lookups} DNS lookups (through "
                            f"{', '.join(needed.trail)}); receivers stop at {spf.LOOKUP_LIMIT} "
                            "and answer permerror",
            "replace includes by the ip4:/ip6: ranges they list, or drop senders you no longer use"))
    elif needed.result in ("permerror", "temperror"):
        findings.append(Finding("spf", "error", f"the SPF record cannot be evaluated: {needed.reason}"))
    else:
        findings.append(Finding("spf", "ok", f"the SPF record needs {needed.lookups} of "
                                             f"{spf.LOOKUP_LIMIT} DNS lookups"))
    if not egress_ips:
        findings.append(Finding("spf", "warn", "no egress IPs to check the record against",
                                "pass --ip ADDRESS for each public address mail leaves from"))
    for ip in egress_ips:
        outcome = await spf.check_host(dns, ip, domain)
        if outcome.result == "pass":
            findings.append(Finding("spf", "ok", f"{ip} passes ({outcome.reason})"))
        else:
            findings.append(Finding("spf", "error", f"{ip} gets {outcome.result} ({outcome.reason})",
                                    f"add ip{6 if ':' in ip else 4}:{ip} to the SPF record of {domain}"))
    if any(r.lower().split()[-1] in ("+all", "all") for r in records):
        findings.append(Finding("spf", "error", "the record ends in +all: anyone may send as this domain",
                                "end it with -all or ~all"))
    return findings


async def _dmarc_record(dns: ResolverDns, domain: str) -> tuple[str, dict[str, str]] | None:
    """The DMARC record that applies: the domain's own, else its organisational domain's.
    A failed lookup raises SpfTempError: "no record" would be a guess."""
    labels = domain.split(".")
    for name in dict.fromkeys([domain, ".".join(labels[-2:])]):
        records = [r for r in await dns.txt(f"_dmarc.{name}") if r.lower().startswith("v=dmarc1")]
        if len(records) == 1:
            return name, tags(records[0])
    return None


async def check_dmarc(dns: ResolverDns, domain: str, signing: str | None) -> list[Finding]:
    try:
        found = await _dmarc_record(dns, domain)
    except spf.SpfTempError as exc:
        return [Finding("dmarc", "error", f"_dmarc.{domain}: DNS lookup failed: {exc}",
                        "check that the resolver (delivery.nameservers) answers, then run this again")]
    if found is None:
        return [Finding("dmarc", "error", f"no DMARC record at _dmarc.{domain}",
                        f'publish _dmarc.{domain} TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}"')]
    where, record = found
    policy = record.get("p", "")
    findings = [Finding("dmarc", "ok", f"DMARC record at _dmarc.{where}: p={policy or '?'}"
                                       + (" (inherited by the subdomain)" if where != domain else ""))]
    if policy not in ("none", "quarantine", "reject"):
        findings.append(Finding("dmarc", "error", f"p={policy!r} is not none, quarantine or reject",
                                "set p=quarantine (or reject)"))
    elif policy == "none":
        findings.append(Finding("dmarc", "warn", "p=none only monitors: spoofed mail is still delivered",
                                "move to p=quarantine, then p=reject, once reports show all mail aligned"))
    if signing is not None:
        strict = record.get("adkim", "r").lower() == "s"
        if strict and signing != domain:
            findings.append(Finding("dmarc", "error", f"adkim=s (strict) but mail from {domain} is signed as "
                                                      f"{signing}, which does not align",
                                    f"add a DKIM key for {domain} itself, or set adkim=r"))
        else:
            findings.append(Finding("dmarc", "ok", f"DKIM d={signing} aligns with From {domain} "
                                                   f"({'strict' if strict else 'relaxed'})"))
    if "rua" not in record:
        findings.append(Finding("dmarc", "info", "no rua= address: nobody receives the aggregate reports"))
    return findings


async def check_mta_sts(config: Config, resolver: MxResolver, dns: ResolverDns, domain: str) -> list[Finding]:
    try:
        records = [r for r in await dns.txt(f"_mta-sts.{domain}") if r.startswith("v=STSv1")]
    except spf.SpfTempError as exc:
        return [Finding("mta-sts", "warn", f"_mta-sts.{domain}: DNS lookup failed: {exc}")]
    if not records:
        return [Finding("mta-sts", "info", f"no MTA-STS record (optional: senders to {domain} could "
                                           "then insist on TLS)")]
    if "id" not in tags(records[0]):
        return [Finding("mta-sts", "error", f"_mta-sts.{domain} has no id= tag",
                        'publish "v=STSv1; id=20240101" (a new id on each policy change)')]
    ca_file = str(config.delivery.ca_file) if config.delivery.ca_file else None
    try:
        policy = await MtaSts(resolver, port=config.delivery.mta_sts_port, ca_file=ca_file).fetch(domain)
    except Exception as exc:  # any failure to fetch is the finding itself
        return [Finding("mta-sts", "error", f"the policy at https://mta-sts.{domain}/.well-known/mta-sts.txt "
                                            f"cannot be fetched: {str(exc)[:200]}")]
    return [Finding("mta-sts", "ok", f"policy mode {policy.mode}, mx {', '.join(policy.mx)}, "
                                     f"max_age {policy.max_age}")]


async def check_tls_rpt(dns: ResolverDns, domain: str) -> list[Finding]:
    try:
        records = [r for r in await dns.txt(f"_smtp._tls.{domain}") if r.startswith("v=TLSRPTv1")]
    except spf.SpfTempError as exc:
        return [Finding("tls-rpt", "warn", f"_smtp._tls.{domain}: DNS lookup failed: {exc}")]
    if not records:
        return [Finding("tls-rpt", "info", "no TLS-RPT record (optional: receive reports of TLS failures "
                                           f"towards {domain})")]
    rua = tags(records[0]).get("rua", "")
    if not rua.startswith(("mailto:", "https:")):
        return [Finding("tls-rpt", "error", f"_smtp._tls.{domain} has no mailto: or https: rua=",
                        f'publish "v=TLSRPTv1; rua=mailto:tlsrpt@{domain}"')]
    return [Finding("tls-rpt", "ok", f"reports go to {rua}")]


def render(domain: str, findings: Sequence[Finding]) -> str:
    """The report for a terminal: grouped by check, fixes under their findings, a summary line."""
    lines = [f"DNS check of {domain}", ""]
    for check in dict.fromkeys(f.check for f in findings):
        lines.append(check.upper())
        for finding in (f for f in findings if f.check == check):
            lines.append(f"  {finding.status:<6} {finding.message}")
            if finding.fix:
                lines.append(f"         fix: {finding.fix}")
    errors = sum(f.status == "error" for f in findings)
    warnings = sum(f.status == "warn" for f in findings)
    lines += ["", f"{errors} error(s), {warnings} warning(s)"
              + (f": fix the errors before sending from {domain}" if errors else "")]
    return "\n".join(lines)
