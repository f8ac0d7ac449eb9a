"""When to try a deferred message again, and when to give up (pure functions, no I/O).

After the n-th failed attempt the message waits ``retry_schedule[n-1]`` (the last interval repeats),
moved by up to ±`JITTER` of itself so that messages deferred together (one destination went down)
do not all come back in the same second. Once a message has been queued for ``max_queue_age`` a
temporary failure becomes final and the sender gets a DSN, as in Postfix's ``maximal_queue_lifetime``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

JITTER = 0.1


def next_attempt(now: float, attempts: int, schedule: Sequence[float],
                 rng: random.Random | None = None) -> float:
    """When the next attempt is due, after `attempts` failed attempts (at least 1)."""
    interval = schedule[min(max(attempts, 1), len(schedule)) - 1]
    spread = (rng or random).uniform(-JITTER, JITTER)
    return now + interval * (1.0 + spread)


def expired(received_at: float, now: float, max_queue_age: float) -> bool:
    return now - received_at >= max_queue_age


def due_for_delay_warning(received_at: float, now: float, delay_warning: float | None) -> bool:
    return delay_warning is not None and now - received_at >= delay_warning
