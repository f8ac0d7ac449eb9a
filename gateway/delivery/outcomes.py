"""What each recipient's result means beyond its state: the failure class (for the audit log and
metrics), the per pool and sender domain counts behind bounce and complaint rates, and hard
bounces put on the suppression list.

Sender domains become metric labels only when configured (`relay.sender_domains` or `domains`),
so a stray envelope sender cannot grow the number of time series; others count as "other".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway import metrics
from gateway.message import Attempt, QueuedMessage, RecipientState
from gateway.reputation.bounces import BounceClass, classify, suppresses
from gateway.state.suppression import GLOBAL, Suppression


class Outcomes:
    def __init__(self, suppression: Suppression | None, *, scope: str,
                 sender_domains: Iterable[str]) -> None:
        self.suppression = suppression
        self.scope = scope  # sender_domain or global
        self.sender_domains = frozenset(d.lower() for d in sender_domains)

    def needs_thread(self, attempt: Attempt, state: RecipientState) -> bool:
        """Whether `account` may write to the suppression database for this result (rare: a
        final failure), so the caller runs it in a thread; else it is cheap enough inline."""
        return state is RecipientState.BOUNCED and attempt.reply.code >= 500 and self.suppression is not None

    def domain_label(self, sender: str) -> str:
        domain = sender.rpartition("@")[2].lower()
        return domain if domain in self.sender_domains else "other"

    def account(self, message: QueuedMessage, attempt: Attempt, state: RecipientState, word: str,
                status: str) -> tuple[BounceClass | None, list[dict[str, Any]]]:
        """Count the result; for a failure, its class; a hard bounce is suppressed (a database
        write: on the event loop only through `needs_thread`). Returns the class and any audit
        records to add."""
        metrics.SENDER_OUTCOMES.labels(attempt.pool, self.domain_label(message.envelope.sender), word).inc()
        reply = attempt.reply
        if reply.code < 400:
            return None, []
        bounce_class = classify(reply.code, status, reply.text, tls_failure=attempt.tls_failure)
        metrics.DELIVERY_FAILURES.labels(bounce_class, word).inc()
        records: list[dict[str, Any]] = []
        if (state is RecipientState.BOUNCED and suppresses(reply.code, bounce_class)
                and self.suppression is not None and message.envelope.sender):
            address = message.envelope.recipients[attempt.index].address
            scope = message.envelope.sender.rpartition("@")[2].lower() if self.scope == "sender_domain" \
                else GLOBAL
            if self.suppression.add(address, scope=scope, reason="bounce", detail=f"{reply.code} {status}"):
                metrics.SUPPRESSED.labels("bounce").inc()
            records.append({"event": "suppressed", "queue_id": message.queue_id, "recipient": address,
                            "scope": scope, "reason": "bounce", "status": status})
        return bounce_class, records
