"""Exponential backoff delays: quick first looks, then a steady pace; shared by every retry and poll loop."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["backoff_delays"]


def backoff_delays(longest_s: float, first_s: float = 0.25) -> Iterator[float]:
    """``first_s``, doubling, then ``longest_s`` for ever: quick first looks, then a steady pace."""
    delay = min(first_s, longest_s)
    while True:
        yield delay
        delay = min(delay * 2, longest_s)
