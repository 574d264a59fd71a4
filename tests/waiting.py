"""The one way tests wait for a condition: poll it against a monotonic deadline, never sleep and hope.

``wait_until`` (threads, subprocesses) and ``wait_until_async`` (inside the event loop) call the
predicate until it returns something truthy and return that value. On timeout they raise
``AssertionError`` naming what was awaited and the last value seen, so a failure says what did not
happen rather than just "timed out".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_async"]

T = TypeVar("T")

# Short enough that a wait adds little to a test, long enough not to hog the two shared CPUs.
POLL_S = 0.05


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = POLL_S,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value (returned); exceptions in ``ignore`` mean "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            last: object = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; last: {last!r}")
        time.sleep(poll_s)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = POLL_S,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`wait_until` for the event loop: ``predicate`` may be a coroutine function; the loop keeps running."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
            last: object = await value if isinstance(value, Awaitable) else value
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; last: {last!r}")
        await asyncio.sleep(poll_s)
