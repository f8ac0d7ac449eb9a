"""From a scan summary and the envelope to a decision: which rules matched, what happens to the
message, which recipients must get protected delivery, which headers to add, whom to notify.

Pure functions of their inputs, so `mailward policy test` and the gateway decide identically.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.message import Envelope
from gateway.stages.dlp.policy import (
    PROTECTION_ORDER,
    STRENGTH,
    Policies,
    PolicyFile,
    Rule,
    matches_address,
)
from gateway.stages.dlp.scanner import ScanSummary


@dataclass(frozen=True)
class Verdict:
    action: str  # allow, tag, notify, encrypt, hold, tempfail or block (the strongest applied)
    matched: tuple[str, ...] = ()  # every rule whose conditions held, for some recipient
    applied: tuple[str, ...] = ()  # the rules that decided, for some recipient
    protect: tuple[int, ...] = ()  # indexes of recipients that need protected delivery
    headers: tuple[tuple[str, str], ...] = ()
    notify: tuple[str, ...] = ()  # compliance addresses to tell
    reply: str = ""  # the text of the 5xx when the action is block
    methods: tuple[str, ...] = PROTECTION_ORDER  # protection order, from the deciding encrypt rule
    receipt: bool = False  # a rule asks for a protection receipt to the sender
    pool: str | None = None  # a rule asks for an egress pool
    error: str | None = None  # why on_error decided: "timeout" or "scan_failed"
    recipient_actions: tuple[str, ...] = ()  # per recipient, in envelope order
    # Per recipient, why it is or is not protected ("rule phi-identifiers: encrypt", "protect:
    # all in healthcare.yaml, no rule allows less", "rule newsletters: allow").
    protection_reasons: tuple[str, ...] = ()
    # Whether content rules (rules that test detectors) found PHI: the same in both modes.
    phi: bool = False


def decide(policies: Policies, summary: ScanSummary, envelope: Envelope) -> Verdict:
    """The rules' decision; if the scan ran out of time, `on_error`'s where that is stronger
    (what was found before the deadline still counts: enough SSNs to block still block)."""
    verdict = _decide(policies, summary, envelope)
    if "time" in summary.limits_hit:
        fallback = on_error(policies, envelope, "timeout")
        if STRENGTH[fallback.action] > STRENGTH[verdict.action]:
            return dataclasses.replace(fallback, matched=verdict.matched)
    return verdict


def _decide(policies: Policies, summary: ScanSummary, envelope: Envelope) -> Verdict:
    matched: dict[str, None] = {}
    per_recipient: list[list[tuple[PolicyFile, Rule]]] = [[] for _ in envelope.recipients]
    for policy in policies.files:
        candidates = [(i, rule) for i, rule in enumerate(policy.rules) if _holds(rule, summary, envelope)]
        for index, recipient in enumerate(envelope.recipients):
            eligible = [(i, rule) for i, rule in candidates if not rule.when.recipients
                        or matches_address(recipient.address, rule.when.recipients)]
            matched.update((rule.name, None) for _, rule in eligible)
            if not eligible:
                continue
            chosen = eligible[0][1] if policy.match == "first" else \
                max(eligible, key=lambda item: (item[1].rank, -item[0]))[1]
            per_recipient[index].append((policy, chosen))

    actions = [max((rule.action for _, rule in applied), key=STRENGTH.__getitem__, default="allow")
               for applied in per_recipient]
    reasons = [_protection_reason(policies, applied) for applied in per_recipient]
    everything = [(policy, rule) for applied in per_recipient for policy, rule in applied]
    action = max(actions, key=STRENGTH.__getitem__, default="allow")
    blocking = next((rule for _, rule in everything if rule.action == "block"), None)
    encrypting = next((rule for _, rule in everything if rule.action == "encrypt"), None)
    return Verdict(
        action=action,
        matched=tuple(matched),
        applied=tuple(dict.fromkeys(rule.name for _, rule in everything)),
        protect=tuple(i for i, reason in enumerate(reasons) if reason[0]),
        headers=tuple(dict.fromkeys(h for _, rule in everything if (h := rule.header) is not None)),
        notify=tuple(dict.fromkeys(policy.notify_to for policy, rule in everything
                                   if rule.notifies and policy.notify_to)),
        reply=blocking.reply if blocking is not None else "",
        methods=encrypting.protection if encrypting is not None else PROTECTION_ORDER,
        receipt=any(rule.receipt for _, rule in everything),
        pool=next((rule.pool for _, rule in everything if rule.pool), None),
        recipient_actions=tuple(actions),
        protection_reasons=tuple(reason for _, reason in reasons),
        phi=any(_tests_content(rule) and rule.action != "allow"
                for policy in policies.files for rule in policy.rules if rule.name in matched))


def _protection_reason(policies: Policies, applied: list[tuple[PolicyFile, Rule]]) -> tuple[bool, str]:
    """Whether one recipient needs protection, and why. An encrypt rule of any file protects; a
    file in `protect: all` mode protects unless the rule it chose for the recipient allows."""
    encrypting = next((rule for _, rule in applied if rule.action == "encrypt"), None)
    if encrypting is not None:
        return True, f"rule {encrypting.name}: encrypt"
    chosen = {id(policy): rule for policy, rule in applied}
    for policy in policies.files:
        if policy.protect != "all":
            continue
        rule = chosen.get(id(policy))
        if rule is None or rule.action != "allow":
            name = policy.source.rsplit("/", 1)[-1] or "policy"
            return True, f"protect: all in {name}" + (f" (rule {rule.name}: {rule.action})" if rule
                                                      else ", and no rule allows less")
    allowing = next((rule for _, rule in applied if rule.action == "allow"), None)
    if allowing is not None:
        return False, f"rule {allowing.name}: allow"
    return False, "protect: sensitive, and no rule found anything that needs protection"


def _tests_content(rule: Rule) -> bool:
    """A rule that looks at what the message says (detectors), not at who sends it."""
    return bool(rule.when.detectors or rule.when.all_detectors or rule.when.min_total)


def on_error(policies: Policies, envelope: Envelope, reason: str) -> Verdict:
    """The decision when the scan could not finish: the strictest `on_error` of the files.
    "encrypt" protects every recipient, since nobody knows what the message holds."""
    action = policies.on_error
    recipients = range(len(envelope.recipients))
    return Verdict(action=action, protect=tuple(recipients) if action == "encrypt" else (),
                   reply="Message could not be checked by data loss prevention policy",
                   error=reason, recipient_actions=tuple(action for _ in recipients))


def _holds(rule: Rule, summary: ScanSummary, envelope: Envelope) -> bool:
    """The message-wide conditions of `rule` (recipient patterns are applied per recipient)."""
    when = rule.when
    counts = summary.counts
    if when.detectors and not any(counts.get(n, 0) >= c for n, c in when.detectors.items()):
        return False
    if when.all_detectors and not all(counts.get(n, 0) >= c for n, c in when.all_detectors.items()):
        return False
    if when.min_total:
        names = when.detectors or counts
        if sum(counts.get(name, 0) for name in names) < when.min_total:
            return False
    if when.senders and not matches_address(envelope.sender, when.senders):
        return False
    if when.subject_tags and not any(tag.lower() in summary.subject_tags for tag in when.subject_tags):
        return False
    if when.facts and not any(fact in summary.facts for fact in when.facts):
        return False
    return not when.attachment_types or any(
        kind.lower().lstrip(".") in summary.attachment_types for kind in when.attachment_types)
