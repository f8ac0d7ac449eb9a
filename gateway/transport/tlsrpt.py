"""SMTP TLS reporting (RFC 8460): count TLS sessions per recipient policy domain, and once a day
send each domain that asks for it (its ``_smtp._tls`` TXT record, ``rua=``) a JSON report of the
previous UTC day: by mail (queued like any message, ``application/tlsrpt+gzip``) or by HTTPS POST.

Counts are kept per day in ``tls_reports.dir/DAY.json`` (written atomically after each change,
at most once a second), so a restart does not lose them. Only domains, MX host names, IP
addresses, policy strings and counts are recorded: nothing about messages or people.
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway import eventlog
from gateway.durable import write_atomic
from gateway.message import QueuedMessage
from gateway.resolver import DnsResolver, MxResolver, ResolutionError
from gateway.spool.generated import generated, notice

log = logging.getLogger("mailward.tlsrpt")
FLUSH_INTERVAL = 1.0
Enqueue = Callable[[QueuedMessage, bytes], Awaitable[None]]


def today(now: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(now or time.time(), datetime.UTC).date().isoformat()


@dataclass
class TlsReportStore:
    directory: Path
    _days: dict[str, dict[str, Any]] = field(default_factory=dict)
    _flushed: float = 0.0
    _dirty: set[str] = field(default_factory=set)

    def record(self, domain: str, policy_type: str, policy_strings: list[str], mx_host: str,
               receiving_ip: str | None, result: str | None) -> None:
        """One TLS session attempt to `mx_host` for `domain`: `result` None is a success, else
        the RFC 8460 result-type of the failure."""
        day = today()
        data = self._load(day)
        key = f"{domain}|{policy_type}"
        entry = data.setdefault(key, {"domain": domain, "policy_type": policy_type,
                                      "policy_strings": policy_strings, "mx_host": [],
                                      "success": 0, "failures": {}})
        if mx_host and mx_host not in entry["mx_host"]:
            entry["mx_host"].append(mx_host)
        if result is None:
            entry["success"] += 1
        else:
            failure = f"{result}|{mx_host}|{receiving_ip or ''}"
            entry["failures"][failure] = entry["failures"].get(failure, 0) + 1
        self._dirty.add(day)
        if time.monotonic() - self._flushed >= FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for day in self._dirty:
            write_atomic(self.directory / f"{day}.json", json.dumps(self._days[day]).encode())
        self._dirty.clear()
        self._flushed = time.monotonic()

    def _load(self, day: str) -> dict[str, Any]:
        if day not in self._days:
            path = self.directory / f"{day}.json"
            try:
                self._days[day] = json.loads(path.read_text()) if path.exists() else {}
            except (OSError, ValueError):
                eventlog.event(log, "tlsrpt_unreadable", logging.WARNING, file=path)
                self._days[day] = {}
        return self._days[day]

    def domains(self, day: str) -> list[str]:
        return sorted({entry["domain"] for entry in self._load(day).values()})

    def report(self, day: str, domain: str, *, organization: str, contact: str) -> dict[str, Any]:
        """The RFC 8460 §4.4 JSON report of `day` for `domain`."""
        start = f"{day}T00:00:00Z"
        end = (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat() + "T00:00:00Z"
        policies = []
        for entry in self._load(day).values():
            if entry["domain"] != domain:
                continue
            failures = []
            for failure, count in sorted(entry["failures"].items()):
                result, mx_host, receiving_ip = failure.split("|")
                detail: dict[str, Any] = {"result-type": result, "receiving-mx-hostname": mx_host,
                                          "failed-session-count": count}
                if receiving_ip:
                    detail["receiving-ip"] = receiving_ip
                failures.append(detail)
            policies.append({
                "policy": {"policy-type": entry["policy_type"], "policy-string": entry["policy_strings"],
                           "policy-domain": domain, "mx-host": entry["mx_host"]},
                "summary": {"total-successful-session-count": entry["success"],
                            "total-failure-session-count": sum(entry["failures"].values())},
                "failure-details": failures})
        return {"organization-name": organization,
                "date-range": {"start-datetime": start, "end-datetime": end},
                "contact-info": contact,
                "report-id": f"{day}_{domain}_{secrets.token_hex(6)}",
                "policies": policies}

    def remove(self, day: str) -> None:
        self._days.pop(day, None)
        (self.directory / f"{day}.json").unlink(missing_ok=True)


def parse_rua(txt_records: list[str]) -> list[str]:
    """The rua URIs of the one ``v=TLSRPTv1`` record, [] when there is not exactly one."""
    records = [r for r in txt_records if r.replace(" ", "").startswith("v=TLSRPTv1")]
    if len(records) != 1:
        return []
    for part in records[0].split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == "rua":
            return [uri.strip() for uri in value.split(",") if uri.strip().startswith(("mailto:", "https:"))]
    return []


def report_message(report: dict[str, Any], domain: str, *, sender: str, to: str,
                   hostname: str) -> tuple[QueuedMessage, bytes]:
    """The report as mail (RFC 8460 §5.3): multipart/report; report-type=tlsrpt, gzip'd JSON."""
    submitter = hostname
    start = report["date-range"]["start-datetime"][:10]
    subject = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>"
    mail = notice(sender=sender, to=to, subject=subject, hostname=hostname)
    mail["TLS-Report-Domain"] = domain
    mail["TLS-Report-Submitter"] = submitter
    mail.set_content(f"This is an aggregate TLS report from {submitter} for {domain}, {start}.\n")
    mail.add_attachment(gzip.compress(json.dumps(report).encode()), maintype="application",
                          subtype="tlsrpt+gzip",
                          filename=f"{submitter}!{domain}!{start}!{report['report-id']}.json.gz")
    mail.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"; boundary="'
                          + str(mail.get_boundary()) + '"')
    return generated(mail, recipient=to, hostname=hostname, listener="tlsrpt")


async def post_report(url: str, report: dict[str, Any], *, resolver: MxResolver, ssl_context: Any,
                      timeout: float = 30.0) -> None:
    """HTTPS POST of the gzip'd report; raises on anything but 2xx."""
    connector = aiohttp.TCPConnector(ssl=ssl_context, resolver=DnsResolver(resolver))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.post(url, data=gzip.compress(json.dumps(report).encode()), allow_redirects=False,
                         headers={"Content-Type": "application/tlsrpt+gzip"}) as response:
        if not 200 <= response.status < 300:
            raise ValueError(f"HTTP status {response.status}")


class TlsReporter:
    """Sends the reports of finished days; `send_due` is called hourly by the delivery service."""

    def __init__(self, store: TlsReportStore, resolver: MxResolver, *, organization: str, contact: str,
                 sender: str, hostname: str, enqueue: Enqueue, ssl_context: Any) -> None:
        self.store = store
        self._resolver = resolver
        self._organization, self._contact = organization, contact
        self._sender, self._hostname = sender, hostname
        self._enqueue = enqueue
        self._ssl_context = ssl_context

    async def send_due(self, now: float | None = None) -> int:
        """Report every day before today that is on disk, then forget it. Returns reports sent."""
        self.store.flush()
        sent = 0
        current = today(now)
        for path in sorted(self.store.directory.glob("*.json")):
            day = path.stem
            if day >= current:
                continue
            for domain in self.store.domains(day):
                sent += await self._send(day, domain)
            self.store.remove(day)
        return sent

    async def _send(self, day: str, domain: str) -> int:
        try:
            rua = parse_rua(await self._resolver.txt(f"_smtp._tls.{domain}"))
        except ResolutionError:
            rua = []
        report = self.store.report(day, domain, organization=self._organization, contact=self._contact)
        sent = 0
        for uri in rua:
            try:
                if uri.startswith("mailto:"):
                    message, content = report_message(report, domain, sender=self._sender,
                                                      to=uri[len("mailto:"):].split("?")[0],
                                                      hostname=self._hostname)
                    await self._enqueue(message, content)
                else:
                    await post_report(uri, report, resolver=self._resolver, ssl_context=self._ssl_context)
                sent += 1
                eventlog.event(log, "tlsrpt_sent", domain=domain, day=day, to=uri.split("?")[0])
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
                eventlog.event(log, "tlsrpt_failed", logging.WARNING, domain=domain, day=day,
                               to=uri.split("?")[0], error=str(exc)[:200])
        return sent
