"""Retry timing as pure functions."""

from __future__ import annotations

import random

from gateway.delivery import retry

SCHEDULE = (60.0, 300.0, 900.0)


def test_each_attempt_waits_its_interval_within_the_jitter() -> None:
    rng = random.Random(7)
    for attempts, interval in ((1, 60.0), (2, 300.0), (3, 900.0)):
        delay = retry.next_attempt(1000.0, attempts, SCHEDULE, rng) - 1000.0
        assert interval * (1 - retry.JITTER) <= delay <= interval * (1 + retry.JITTER)


def test_the_last_interval_repeats() -> None:
    delay = retry.next_attempt(0.0, 12, SCHEDULE, random.Random(1))
    assert 900.0 * (1 - retry.JITTER) <= delay <= 900.0 * (1 + retry.JITTER)


def test_jitter_spreads_messages_deferred_together() -> None:
    rng = random.Random(3)
    assert len({retry.next_attempt(0.0, 1, SCHEDULE, rng) for _ in range(20)}) == 20


def test_expiry_and_delay_warning_thresholds() -> None:
    assert retry.expired(0.0, 100.0, 100.0) and not retry.expired(0.0, 99.0, 100.0)
    assert retry.due_for_delay_warning(0.0, 10.0, 10.0)
    assert not retry.due_for_delay_warning(0.0, 10.0 ** 9, None)
