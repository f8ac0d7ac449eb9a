"""The DLP stage: scan the message in a worker, decide by policy, act.

It runs before the 250, so that a block is a 5xx the sending server turns into a bounce for the
user (Exchange Online sends an NDR). A scan that fails or overruns `dlp.time_budget` is decided
by the policy's `on_error` (default hold), never let through unchecked. Logs and metrics get the
action, rule names and detector counts; never what was found.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from gateway import eventlog, metrics
from gateway.config import Config
from gateway.errors import Hold, Reject, TempFail
from gateway.message import PolicyDecision
from gateway.pipeline import PipelineItem
from gateway.policies import builtin_directory
from gateway.stages.dlp.extract import ExtractLimits
from gateway.stages.dlp.notify import notification
from gateway.stages.dlp.policy import Policies, load_policies
from gateway.stages.dlp.scanner import ScanRequest, ScanSummary, build_detectors, build_prefilter
from gateway.stages.dlp.scanpool import ScanFailed, ScanPool
from gateway.stages.dlp.verdict import Verdict, decide, on_error

log = logging.getLogger("mailward.dlp")


@dataclass(frozen=True)
class DlpSettings:
    """The reloadable part: swapped whole on SIGHUP."""

    policies: Policies
    request: ScanRequest
    hostname: str
    notify_from: str


class DlpStage:
    name = "dlp"

    def __init__(self, settings: DlpSettings, pool: ScanPool) -> None:
        self.settings = settings
        self.pool = pool

    def prepare(self) -> None:
        """Build the detectors now (cached per policy version) rather than in the first scan."""
        if self.settings.policies.files:
            build_detectors(self.settings.request.detectors)
            build_prefilter(self.settings.request.detectors)

    async def process(self, item: PipelineItem) -> None:
        settings = self.settings
        policies = settings.policies
        if not policies.files:
            return
        message = item.message
        summary: ScanSummary | None = None
        try:
            summary = await self.pool.scan(item.content, settings.request)
            verdict = decide(policies, summary, message.envelope)
        except ScanFailed as failure:
            metrics.DLP_SCAN_ERRORS.labels(failure.reason).inc()
            verdict = on_error(policies, message.envelope, failure.reason)
        self._account(message.queue_id, verdict, summary)
        item.notes[self.name] = summary
        item.message = dataclasses.replace(message, policy=PolicyDecision(
            action=verdict.action, rules=verdict.applied, protect=verdict.protect,
            methods=verdict.methods, receipt=verdict.receipt, pool=verdict.pool,
            detectors=tuple(sorted(summary.counts.items())) if verdict.action == "hold" and summary else ()))
        item.add_headers(verdict.headers)
        for address in verdict.notify:
            item.generated.append(notification(item.message, verdict, summary, to=address,
                                               sender=settings.notify_from, hostname=settings.hostname))
        if verdict.action == "block":
            raise Reject(verdict.reply, code=550, status="5.7.1")
        if verdict.action == "tempfail":
            raise TempFail("Message could not be checked now, try again later", status="4.3.0")
        if verdict.action == "hold":
            raise Hold("Message held for review")

    @staticmethod
    def _account(queue_id: str, verdict: Verdict, summary: ScanSummary | None) -> None:
        for rule in verdict.matched:
            metrics.DLP_MATCHES.labels(rule).inc()
        metrics.DLP_ACTIONS.labels(verdict.action).inc()
        if summary is not None:
            metrics.DLP_SCAN_DURATION.observe(summary.seconds)
        eventlog.event(
            log, "policy", queue_id=queue_id, action=verdict.action,
            rules=",".join(verdict.applied) or None,
            detectors=",".join(f"{k}:{v}" for k, v in sorted(summary.counts.items())) if summary else None,
            facts=",".join(sorted(summary.facts)) if summary and summary.facts else None,
            protect=len(verdict.protect) or None, error=verdict.error,
            scan_ms=round(summary.seconds * 1000, 1) if summary else None)


def policies_directory(config: Config) -> Path:
    """`policies_dir`, or the built-in policies shipped in the package when it is not set."""
    return config.policies_dir if config.policies_dir is not None else builtin_directory()


def dlp_settings(config: Config) -> DlpSettings:
    """Load the policies and build the scan request from config (raises ConfigErrors)."""
    dlp = config.dlp
    policies = load_policies(policies_directory(config)) if dlp.enabled else Policies()
    limits = ExtractLimits(max_depth=dlp.max_depth, max_parts=dlp.max_parts,
                           max_inflated=dlp.max_inflated, max_ratio=dlp.max_ratio,
                           max_text=dlp.max_text, max_pdf_pages=dlp.max_pdf_pages)
    request = ScanRequest(policies.detectors, policies.subject_tags, limits, float(dlp.time_budget))
    return DlpSettings(policies, request, config.hostname,
                       dlp.notify_from or f"postmaster@{config.hostname}")
