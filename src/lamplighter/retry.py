"""The one retry and poll loop: exponential backoff within a time budget or a number of attempts.

Every loop that waits for something (a server to stop, an app to come up, a websocket to reopen, a
throttled API call) iterates :func:`attempts` and breaks on success::

    async for attempt in attempts(Backoff(first_s=0.1, longest_s=1.0), timeout_s=10):
        try:
            return await call()
        except TransientError:
            if attempt.last:
                raise

``attempt.last`` is true when no further attempt fits the budget: the caller gives up then. The loop
sleeps only when the caller goes round again, so a success costs no delay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

__all__ = ["Attempt", "Backoff", "attempts", "attempts_sync"]


@dataclass(frozen=True)
class Backoff:
    """``first_s``, multiplied by ``factor`` each time up to ``longest_s``: quick first looks, then a steady
    pace. ``jitter`` (0–1) scales each delay by a random factor in ``[1 - jitter, 1]`` so that many
    clients retrying one throttled API do not retry in step."""

    first_s: float = 0.25
    longest_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.0

    def delays(self) -> Iterator[float]:
        delay = min(self.first_s, self.longest_s)
        while True:
            yield delay * random.uniform(1.0 - self.jitter, 1.0) if self.jitter else delay
            delay = min(delay * self.factor, self.longest_s)


@dataclass(frozen=True)
class Attempt:
    number: int
    """1 for the first attempt."""
    last: bool
    """No further attempt fits the time budget or the attempt count: give up if this one fails."""
    delay_s: float
    """The pause before the next attempt (unused when ``last``)."""


def _plan(
    backoff: Backoff, timeout_s: float | None, max_attempts: int | None, clock: Callable[[], float]
) -> Iterator[Attempt]:
    deadline = None if timeout_s is None else clock() + timeout_s
    for number, delay in enumerate(backoff.delays(), start=1):
        last = (max_attempts is not None and number >= max_attempts) or (
            deadline is not None and clock() + delay > deadline
        )
        yield Attempt(number, last, delay)
        if last:
            return


async def attempts(
    backoff: Backoff,
    *,
    timeout_s: float | None = None,
    max_attempts: int | None = None,
    pause_first: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Attempt]:
    """Attempts spaced by ``backoff`` until one is ``last``; ``pause_first`` waits one delay before the first
    (a dropped websocket: the server needs a moment to notice). Unbounded when neither limit is given."""
    if pause_first:
        await asyncio.sleep(min(backoff.first_s, backoff.longest_s))
    for attempt in _plan(backoff, timeout_s, max_attempts, clock):
        yield attempt
        if not attempt.last:
            await asyncio.sleep(attempt.delay_s)


def attempts_sync(
    backoff: Backoff, *, timeout_s: float | None = None, clock: Callable[[], float] = time.monotonic
) -> Iterator[Attempt]:
    """:func:`attempts` for blocking code (starting a local server before any event loop runs)."""
    for attempt in _plan(backoff, timeout_s, None, clock):
        yield attempt
        if not attempt.last:
            time.sleep(attempt.delay_s)
