"""What lamplighter knows and decides: observations, remembered state and decisions. No I/O here.

Timestamps are tz-aware UTC everywhere; they are converted once, where data enters
(:func:`parse_timestamp`), so nothing downstream compares naive and aware datetimes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "Action",
    "ActivityReading",
    "Clock",
    "Decision",
    "KernelInfo",
    "Memory",
    "Observation",
    "ProbeFailure",
    "ServerSnapshot",
    "StopOutcome",
    "StopResult",
    "TerminalInfo",
    "dates_relative_to",
    "format_duration",
    "format_time",
    "parse_timestamp",
]

UTC = timezone.utc


#: Timestamps outside these are not believed (a server's clock or data is broken); they also keep
#: every later sum with a duration (at most ten years) far from ``datetime.max``.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

_reference: ContextVar[datetime | None] = ContextVar("lamplighter_time_reference", default=None)


def parse_timestamp(value: object) -> datetime:
    """Parse a Jupyter/ISO-8601 timestamp into an aware UTC datetime between :data:`EARLIEST` and :data:`LATEST`.

    Jupyter writes ``...Z`` and drops the fraction when microseconds are 0, so no fixed format is
    used. A naive timestamp is taken as UTC (that is what Jupyter means). Raises ``ValueError`` (and
    nothing else) for anything else, quoting at most 40 characters of it.
    """
    try:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str) and value:
            text = value.strip()
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
        else:
            raise ValueError("not a string")
        moment = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # astimezone overflows for year 1 with a positive offset
        raise ValueError(f"not a timestamp: {_quote(value)}") from None
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"timestamp out of range ({EARLIEST.year} to {LATEST.year}): {_quote(value)}")
    return moment


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_time(moment: datetime | None, now: datetime | None = None) -> str:
    """``13:02:05 UTC`` when ``moment`` falls on the day of ``now``, else ``2026-11-23 08:38:05 UTC``.

    Without ``now``, the day is the one set by :func:`dates_relative_to` (the policy's ``now``), or
    else today: a line printed as it is made.
    """
    if moment is None:
        return "never"
    reference = now or _reference.get() or datetime.now(UTC)
    moment = moment.astimezone(UTC)
    if moment.date() == reference.astimezone(UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@contextmanager
def dates_relative_to(now: datetime) -> Iterator[None]:
    """Within the block, :func:`format_time` without ``now`` dates times relative to ``now``'s day."""
    token = _reference.set(now)
    try:
        yield
    finally:
        _reference.reset(token)


def format_duration(delta: timedelta | float) -> str:
    """``1h02m``, ``4m05s``, ``12s``: short and exact enough for a reason line."""
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return (
            f"{sign}{seconds:.0f}s" if seconds >= 10 or seconds == int(seconds) else f"{sign}{seconds:.1f}s"
        )
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h{minutes:02d}m"


class Clock(enum.Enum):
    """Which idleness clock a piece of activity moves."""

    INTERACTION = "interaction"  # somebody did something: ran a cell, typed in a terminal, saved a file
    WORK = "work"  # something is computing: a busy kernel, a busy process tree, a busy GPU


@dataclass(frozen=True)
class KernelInfo:
    """One kernel as the server reports it; ``path`` comes from the session that owns it, if any."""

    id: str
    name: str
    execution_state: str
    last_activity: datetime
    connections: int
    path: str | None = None

    @property
    def label(self) -> str:
        where = f", {self.path}" if self.path else ""
        return f"kernel {self.id[:4]} ({self.name}{where})"


@dataclass(frozen=True)
class TerminalInfo:
    """One terminal; the server only knows its name and when its pty last moved."""

    name: str
    last_activity: datetime

    @property
    def label(self) -> str:
        return f"terminal {self.name}"


@dataclass(frozen=True)
class ActivityReading:
    """A signal's reading: when it last saw activity on one clock, and why (never a verdict).

    ``active_now`` means the signal sees activity at this very moment (a busy process tree); ``at``
    is then the time of the reading. ``hold_until`` asks the policy not to stop before that moment
    (a snooze). ``ready_at`` says the signal cannot tell yet whether work runs (its first window is
    not covered, or a busy spell has begun but is not yet long enough to count): the policy never
    stops before that moment.
    """

    source: str
    clock: Clock
    at: datetime | None
    detail: str
    active_now: bool = False
    hold_until: datetime | None = None
    ready_at: datetime | None = None


@dataclass(frozen=True)
class ServerSnapshot:
    """Everything one probe saw of a server, read without creating activity."""

    target: str
    started: datetime
    last_activity: datetime
    connections: int
    kernels: tuple[KernelInfo, ...] = ()
    terminals: tuple[TerminalInfo, ...] = ()
    readings: tuple[ActivityReading, ...] = ()


@dataclass(frozen=True)
class ProbeFailure:
    """A probe that could not read the server: never evidence of idleness."""

    target: str
    error: str
    unreachable: bool = True


Observation = ServerSnapshot | ProbeFailure


@dataclass(frozen=True)
class Memory:
    """What the agent remembers between probes and across restarts (persisted in the journal).

    ``last_interaction`` and ``last_work`` only ever move forward; ``busy_since`` and
    ``pending_since`` let the policy cap busy or stuck kernels; ``failing_since`` times an outage;
    ``notice_at`` is when lamplighter itself last wrote a warning into the terminals.
    """

    last_interaction: datetime | None = None
    last_work: datetime | None = None
    busy_since: Mapping[str, datetime] = field(default_factory=dict)
    pending_since: Mapping[str, datetime] = field(default_factory=dict)
    failing_since: datetime | None = None
    notice_at: datetime | None = None

    def to_json(self) -> str:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return json.dumps(
            {
                "last_interaction": iso(self.last_interaction),
                "last_work": iso(self.last_work),
                "busy_since": {k: v.isoformat() for k, v in self.busy_since.items()},
                "pending_since": {k: v.isoformat() for k, v in self.pending_since.items()},
                "failing_since": iso(self.failing_since),
                "notice_at": iso(self.notice_at),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Memory:
        """Rebuild from :meth:`to_json`; a damaged record gives an empty memory rather than a crash."""
        try:
            data: dict[str, Any] = json.loads(text)

            def opt(key: str) -> datetime | None:
                return parse_timestamp(data[key]) if data.get(key) else None

            return cls(
                last_interaction=opt("last_interaction"),
                last_work=opt("last_work"),
                busy_since={k: parse_timestamp(v) for k, v in (data.get("busy_since") or {}).items()},
                pending_since={k: parse_timestamp(v) for k, v in (data.get("pending_since") or {}).items()},
                failing_since=opt("failing_since"),
                notice_at=opt("notice_at"),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def evolve(self, **changes: Any) -> Memory:
        return replace(self, **changes)


class Action(enum.Enum):
    """What the policy wants done now."""

    KEEP = "keep"  # in use, or idle but not yet past the deadline
    STOP = "stop"  # idle past the deadline: stop the app
    SKIP = "skip"  # cannot tell (probe failed): do nothing, look again soon


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The policy's verdict with its evidence; the agent logs and journals ``reasons`` word for word.

    Keyword-only: eleven fields, three of them datetimes, are too many to tell apart by position.
    """

    action: Action
    reason: str
    reasons: tuple[str, ...]
    idle_since: datetime | None
    stop_at: datetime | None
    next_check_at: datetime
    cull_kernels: tuple[str, ...] = ()
    cull_terminals: tuple[str, ...] = ()
    warn: bool = False
    memory: Memory = field(default_factory=Memory, compare=False, repr=False)
    provisional: bool = False
    """True while a work signal cannot tell yet: the verdict is KEEP and will be taken again at
    ``next_check_at`` (``watch --once`` and ``status`` wait for that)."""

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form of a decision (``status --json``, the extension, the heartbeat, the journal)."""

        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "verdict": self.action.value,
            "reason": self.reason,
            "reasons": list(self.reasons),
            "idle_since": iso(self.idle_since),
            "stop_at": iso(self.stop_at),
            "next_check_at": iso(self.next_check_at),
            "cull_kernels": list(self.cull_kernels),
            "cull_terminals": list(self.cull_terminals),
            "provisional": self.provisional,
        }

    def changed_from(self, other: Decision | None) -> bool:
        """A verdict worth journaling: a new action, a new deadline or new things to cull."""
        if other is None:
            return True
        return (
            self.action != other.action
            or _second(self.stop_at) != _second(other.stop_at)
            or self.cull_kernels != other.cull_kernels
            or self.cull_terminals != other.cull_terminals
            # Without a deadline (in use, or cannot tell) the reason is the news.
            or (self.stop_at is None and self.reason != other.reason)
        )


def _second(moment: datetime | None) -> datetime | None:
    return moment.replace(microsecond=0) if moment else None


class StopOutcome(enum.Enum):
    """How a stop went; only STOPPED counts as stopped (jupyterhub-idle-culler's rule for 202)."""

    STOPPED = "stopped"  # verified gone
    STOPPING = "stopping"  # accepted but still running: look again next pass
    FAILED = "failed"
    SKIPPED = "skipped"  # dry run, or the action is none


@dataclass(frozen=True)
class StopResult:
    outcome: StopOutcome
    detail: str
    again: bool = False
    """Nothing was asked this time: the answer of the last try still stands (a refusal whose backoff
    has not run out). The agent journals a stop once per try, so not this one."""
