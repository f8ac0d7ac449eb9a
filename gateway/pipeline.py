"""The policy pipeline: an ordered tuple of stages over one message, before it is queued.

A stage has a `name` and one async `process(item)`. It changes the item (content, policy
decision, messages to generate) or raises an outcome: `Reject` (5xx at the end of DATA),
`TempFail` (4xx) or `Hold` (queued in ``hold/`` for review). The runner is the one place that
catches: outcomes pass through to the caller (the SMTP handler), and any other exception becomes
a `TempFail`, so a bug in a stage fails closed (the client keeps the message and retries) instead
of letting the message through unchecked.

Stage order is fixed here: DLP decides first; encryption negotiation, DKIM signing and the audit
record act per recipient at delivery, where the recipient's capabilities are known, in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import Outcome, TempFail
from gateway.message import QueuedMessage

log = logging.getLogger("mailward.pipeline")

STAGE_ORDER = ("dlp", "encryption", "dkim", "audit", "queue")


@dataclass
class PipelineItem:
    """One message on its way through the stages."""

    message: QueuedMessage  # envelope, client, policy decision (replaced, it is frozen)
    content: bytes  # the bytes that will be queued; a stage that changes them writes new ones
    generated: list[tuple[QueuedMessage, bytes]] = field(default_factory=list)  # e.g. notifications
    # Facts a stage leaves for the later ones, by stage name (DLP: its ScanSummary, for the audit
    # record); counts and names only, like everything that leaves a stage.
    notes: dict[str, object] = field(default_factory=dict)

    def add_headers(self, headers: Sequence[tuple[str, str]]) -> None:
        """Prepend header fields (after our Received line stays fine: order is not meaningful)."""
        if headers:
            self.content = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers) + self.content


class Stage(Protocol):
    name: str

    async def process(self, item: PipelineItem) -> None: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage]) -> None:
        order = [STAGE_ORDER.index(stage.name) for stage in stages]
        if order != sorted(order):
            raise ValueError(f"stages must follow the order {', '.join(STAGE_ORDER)}")
        self.stages = tuple(stages)

    async def run(self, item: PipelineItem) -> None:
        """Run every stage in order; raises the outcome that stopped the message, if any."""
        for stage in self.stages:
            try:
                await stage.process(item)
            except Outcome:
                raise
            except Exception as exc:
                log.error("event=stage_failed stage=%s queue_id=%s error=%s", stage.name,
                          item.message.queue_id, type(exc).__name__, exc_info=exc)
                raise TempFail("Temporary failure in message processing, try again later",
                               status="4.3.0") from None
