"""The one retry loop: its schedule, its budget and what ``last`` means."""

from __future__ import annotations

import itertools

from lamplighter.retry import Backoff, attempts, attempts_sync


def test_delays_double_up_to_the_longest() -> None:
    assert list(itertools.islice(Backoff(0.25, 2.0).delays(), 6)) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_jitter_stays_within_its_fraction() -> None:
    delays = list(itertools.islice(Backoff(1.0, 1.0, jitter=0.5).delays(), 50))
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


def test_the_attempt_whose_pause_would_pass_the_budget_is_last() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    seen = []
    for attempt in attempts_sync(Backoff(1.0, 1.0), timeout_s=2.5, clock=clock):
        seen.append((attempt.number, attempt.last))
        now[0] += attempt.delay_s  # what the real sleep would do, without sleeping
    assert seen == [(1, False), (2, False), (3, True)]


async def test_a_success_ends_the_loop_without_a_pause() -> None:
    tries = 0
    async for attempt in attempts(Backoff(0.001, 0.001), max_attempts=5):
        tries += 1
        if attempt.number == 2:
            break
    assert tries == 2


async def test_the_attempt_count_bounds_the_loop() -> None:
    numbers = [a.number async for a in attempts(Backoff(0.001, 0.001), max_attempts=3)]
    assert numbers == [1, 2, 3]
