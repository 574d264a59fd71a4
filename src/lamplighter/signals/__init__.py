"""Signals: background samplers that turn what a machine is doing into readings, never into decisions.

A signal owns one source of evidence: the app's process tree (:mod:`.processes`), its GPUs
(:mod:`.gpu`) or its workspace files (:mod:`.files`). The agent runs :meth:`Signal.run` in a task for
as long as it watches, and cancels it at exit. The agent sleeps until a deadline and only then asks for
:meth:`Signal.reading`, so a signal samples on its own cadence and remembers *when* it last saw
activity: a job that ended while the agent slept is reported with the time it ended and
``active_now=False``.

This module also holds what the two work signals (processes, GPU) share: :class:`BusyWindow`, the
hysteresis that keeps a short blip from counting as sustained work, the options that tune it
(:class:`BusyWindowOptions`) and their sampling cadence (:func:`sample_every`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from lamplighter.errors import ConfigError
from lamplighter.model import ActivityReading

__all__ = [
    "BusyWindow",
    "BusyWindowOptions",
    "Signal",
    "UsageSummary",
    "format_seconds",
    "format_share",
    "sample_every",
]


class Signal(Protocol):
    """A source of activity readings that samples in the background."""

    name: str

    async def run(self) -> None:
        """Sample until cancelled (the agent runs this in a task and cancels it at exit)."""
        ...

    def reading(self, now: datetime) -> ActivityReading:
        """The latest reading, from memory only (no I/O); ``now`` is the agent's clock."""
        ...

    async def refresh(self) -> None:
        """Sample now, so a stop is never decided on a reading one sample interval old (no-op if cheap)."""
        ...


def format_share(share: float) -> str:
    """``97 %``: a share of one core or one device, as a reason line shows it."""
    return f"{share * 100:.0f} %"


def format_seconds(seconds: float) -> str:
    """``60 s``, ``2.5 s``: a window length, as a reason line shows it."""
    if seconds >= 10 or seconds == int(seconds):
        return f"{seconds:.0f} s"
    return f"{seconds:.1f} s"


@dataclass(frozen=True)
class UsageSummary:
    """Who used a resource over a window: the heaviest user and the total, as average shares.

    A share is a fraction of one CPU core or of one GPU (1.0 = one core or device fully busy).
    """

    top_label: str
    top_share: float
    total_share: float
    users: int
    span_s: float


@dataclass(frozen=True)
class _Sample:
    mono: float
    wall: float
    dt: float
    busy: bool
    usage: Mapping[str, float]  # label -> usage seconds (share x seconds) during this sample


class BusyWindow:
    """Hysteresis for a work signal: use of at least ``threshold`` for ``min_busy_s`` out of ``window_s``.

    Each sample covers ``dt`` seconds and reports usage seconds per user (a process, a device): one
    core fully busy for 5 s is 5.0. A sample is *busy* when the total usage divided by ``dt`` reaches
    ``threshold``. The window *counts* when its busy samples cover at least ``min_busy_s``, so a
    single short spike never counts, while a job that computes in bursts (a duty cycle) does as long
    as its bursts add up within the window. ``active`` means the window counts and the newest sample
    is busy: work right now. ``last_busy_wall`` is the end of the newest busy sample of a window that
    counted: the time work was last seen, which stays right after the work ends.

    Until the samples cover ``min_busy_s`` at all, or while a busy spell has begun that is not yet
    long enough to count, the window cannot tell: :meth:`ready_at` says from when it can.
    """

    def __init__(self, *, window_s: float, min_busy_s: float, threshold: float) -> None:
        self.window_s = window_s
        self.min_busy_s = min_busy_s
        self.threshold = threshold
        self._samples: deque[_Sample] = deque()
        self._covered_s = 0.0
        self.active = False
        self.last_sample_wall: float | None = None
        self.last_busy_wall: float | None = None
        self.last_busy_summary: UsageSummary | None = None

    def add(self, *, mono: float, wall: float, dt: float, usage: Mapping[str, float]) -> None:
        """Record one sample that ended at ``mono`` / ``wall`` and covered ``dt`` seconds."""
        if dt <= 0:
            return
        kept = {label: used for label, used in usage.items() if used > 0}
        busy = sum(kept.values()) / dt >= self.threshold
        self._samples.append(_Sample(mono=mono, wall=wall, dt=dt, busy=busy, usage=kept))
        self._covered_s += dt
        while self._samples and self._samples[0].mono <= mono - self.window_s:
            self._samples.popleft()
        self.last_sample_wall = wall
        # A tiny tolerance: five 0.2 s samples must make 1.0 s despite float sums.
        counts = self._busy_s() >= self.min_busy_s - 1e-6
        self.active = busy and counts
        if counts:
            # Samples arrive in time order, so this never moves back.
            self.last_busy_wall = max(sample.wall for sample in self._samples if sample.busy)
            self.last_busy_summary = self.summary()

    @property
    def covered_s(self) -> float:
        """Seconds all samples so far have covered (not only those in the window)."""
        return self._covered_s

    def _busy_s(self) -> float:
        return sum(sample.dt for sample in self._samples if sample.busy)

    def ready_at(self) -> float | None:
        """Wall time from which the window can tell busy from idle; None when it can now."""
        if self.last_sample_wall is None:
            return None  # no sample at all: the signal itself says why (it has not started)
        missing = self.min_busy_s - self._covered_s
        if missing > 1e-6:
            return self.last_sample_wall + missing
        newest = self._samples[-1] if self._samples else None
        if newest is not None and newest.busy and not self.active:
            return self.last_sample_wall + max(self.min_busy_s - self._busy_s(), 0.0)
        return None

    def summary(self) -> UsageSummary | None:
        """The heaviest user and the total over the samples now in the window; None when nothing was used."""
        span = sum(sample.dt for sample in self._samples)
        totals: dict[str, float] = {}
        for sample in self._samples:
            for label, used in sample.usage.items():
                totals[label] = totals.get(label, 0.0) + used
        if not totals or span <= 0:
            return None
        top = max(totals, key=lambda label: totals[label])
        return UsageSummary(
            top_label=top,
            top_share=totals[top] / span,
            total_share=sum(totals.values()) / span,
            # Pollers that used a fraction of a percent are not worth naming as "users".
            users=max(1, sum(1 for used in totals.values() if used / span >= 0.005)),
            span_s=span,
        )


@dataclass(frozen=True)
class BusyWindowOptions:
    """The cadence and hysteresis of a work signal; the process and GPU options extend it with their own
    threshold and scope. Units are in the names."""

    sample_interval_s: float = 5.0
    """Seconds between two samples."""
    window_s: float = 60.0
    """Seconds of history the busy test looks at."""
    min_busy_s: float | None = None
    """Busy seconds needed within the window to count as work; None means two sample intervals."""

    def _check_window(self, what: str) -> None:
        if self.sample_interval_s <= 0 or self.window_s <= 0:
            raise ConfigError(f"{what}: sample_interval_s and window_s must be positive")
        if self.sample_interval_s >= self.window_s:
            raise ConfigError(
                f"{what}: sample_interval_s ({self.sample_interval_s:g}) must be shorter than "
                f"window_s ({self.window_s:g})"
            )
        if self.min_busy_s is not None and not 0 < self.min_busy_s <= self.window_s:
            raise ConfigError(
                f"{what}: min_busy_s must be in (0, window_s={self.window_s:g}], got {self.min_busy_s:g}"
            )

    @property
    def effective_min_busy_s(self) -> float:
        # Two busy samples: one spike never counts, a job that bursts now and then does.
        return (
            self.min_busy_s if self.min_busy_s is not None else min(2 * self.sample_interval_s, self.window_s)
        )

    def busy_window(self, threshold: float) -> BusyWindow:
        return BusyWindow(window_s=self.window_s, min_busy_s=self.effective_min_busy_s, threshold=threshold)

    def is_fresh(self, last_sample_wall: float | None) -> bool:
        """A sample younger than a quarter interval: a refresh before a stop need not take another."""
        return last_sample_wall is not None and time.time() - last_sample_wall < self.sample_interval_s / 4


async def sample_every(interval_s: float, sample: Callable[[], Awaitable[None]]) -> None:
    """Call ``sample`` every ``interval_s`` (measured start to start) until cancelled."""
    while True:
        started = time.monotonic()
        await sample()
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
