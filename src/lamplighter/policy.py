"""The pure decision: ``(observation, memory, settings, now) → Decision``. No I/O, no clock, no logging.

Two clocks, not one. The *interaction* clock moves when somebody does something (a kernel's or
terminal's ``last_activity``, an open connection when connections count, a file edit). The *work*
clock moves while something computes (a busy kernel, a kernel still starting, a busy process tree or
GPU). The app is idle when both are older than ``idle_timeout``; a fresh app is protected by
``startup_grace``. Checks run in the culler's order: guard clauses (probe failure, work running),
then one idle test, then the overrides (snooze, grace, the maximum age), then what to cull.

Each finding (the work clock, the interaction clock, the deadline, the kernel and terminal culls)
is its own function returning its own reasons and the moments it wants to be looked at again;
:func:`decide` joins them into one verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from lamplighter.model import (
    Action,
    Clock,
    Decision,
    KernelInfo,
    Memory,
    Observation,
    ProbeFailure,
    ServerSnapshot,
    TerminalInfo,
    dates_relative_to,
    format_duration,
    format_time,
)

__all__ = ["PolicySettings", "decide"]

_BUSY = "busy"
_SETTLED = frozenset({"idle", "dead"})
_RETRY_MIN = timedelta(seconds=2)
_RETRY_MAX = timedelta(seconds=60)
_NOTICE_ECHO = timedelta(seconds=2)
# A signal that said "ready at t" is asked again no sooner than this, even when t has just passed.
_SETTLE_MIN = timedelta(milliseconds=100)


class PolicySettings(Protocol):
    """The settings :func:`decide` reads, and no others; ``lamplighter.settings.Settings`` has them all."""

    @property
    def idle_timeout(self) -> timedelta: ...
    @property
    def effective_startup_grace(self) -> timedelta: ...
    @property
    def effective_probe_interval(self) -> timedelta: ...
    @property
    def busy_recheck(self) -> timedelta: ...
    @property
    def max_busy(self) -> timedelta | None: ...
    @property
    def stuck_after(self) -> timedelta: ...
    @property
    def ignore_connections(self) -> bool: ...
    @property
    def skip_terminals(self) -> bool: ...
    @property
    def kernel_timeout(self) -> timedelta | None: ...
    @property
    def terminal_timeout(self) -> timedelta | None: ...
    @property
    def keep_terminals(self) -> bool: ...
    @property
    def warn_before(self) -> timedelta | None: ...
    @property
    def unreachable_timeout(self) -> timedelta | None: ...
    @property
    def unreachable_action(self) -> str: ...
    @property
    def max_age(self) -> timedelta | None: ...


def decide(observation: Observation, memory: Memory, settings: PolicySettings, now: datetime) -> Decision:
    """The verdict for one observation; ``Decision.memory`` is what to remember for the next one."""
    with dates_relative_to(now):  # reasons show a date for any time not on now's day
        if isinstance(observation, ProbeFailure):
            return _decide_unreachable(observation, memory, settings, now)
        return _decide_snapshot(observation, memory, settings, now)


# -- a probe that failed ---------------------------------------------------------------------------


def _decide_unreachable(
    failure: ProbeFailure, memory: Memory, settings: PolicySettings, now: datetime
) -> Decision:
    failing_since = memory.failing_since or now
    down_for = now - failing_since
    remembered = memory.evolve(failing_since=failing_since)
    retry_at = now + min(max(down_for, _RETRY_MIN), _RETRY_MAX)
    reasons = (
        f"probe failed: {failure.error}",
        f"failing since {format_time(failing_since)}; never counted as idle",
    )
    limit = settings.unreachable_timeout
    if not failure.unreachable or limit is None:
        return _cannot_tell(failure, reasons, retry_at, remembered)
    if down_for < limit:
        return _cannot_tell(failure, reasons, min(retry_at, failing_since + limit), remembered)
    if settings.unreachable_action == "stop":
        reason = f"unreachable for {format_duration(down_for)} (unreachable_timeout {format_duration(limit)})"
        return Decision(
            action=Action.STOP,
            reason=reason,
            reasons=(reason, *reasons),
            idle_since=None,
            stop_at=failing_since + limit,
            next_check_at=now,
            memory=remembered,
        )
    reported = (
        f"unreachable since {format_time(failing_since)}, past unreachable_timeout "
        f"{format_duration(limit)}: reported only (unreachable_action=report)"
    )
    # The verdict's own line changes once, when the outage passes the limit: journaled (and logged as
    # a warning) then, not at every check after it.
    told = _cannot_tell(failure, (*reasons, reported), retry_at, remembered)
    return replace(told, reason=f"{told.reason}; {reported}")


def _cannot_tell(
    failure: ProbeFailure, reasons: tuple[str, ...], next_check: datetime, memory: Memory
) -> Decision:
    return Decision(
        action=Action.SKIP,
        reason=f"cannot tell: {failure.error}",
        reasons=reasons,
        idle_since=None,
        stop_at=None,
        next_check_at=next_check,
        memory=memory,
    )


# -- the findings on a snapshot ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Finding:
    """What one rule found: its reasons, and the moments at which its answer may change."""

    reasons: tuple[str, ...] = ()
    next_checks: tuple[datetime, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _Work(_Finding):
    """The work clock: what computes now (``active``) and when work was last seen."""

    active: tuple[str, ...] = ()
    last_seen: datetime | None = None
    busy_since: Mapping[str, datetime] = field(default_factory=dict)
    pending_since: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class _Moment:
    """A timestamp with the sentence that explains it."""

    at: datetime
    why: str


@dataclass(frozen=True, kw_only=True)
class _Interaction(_Finding):
    """The interaction clock: who interacts now (``active``) and the latest moment somebody did."""

    active: tuple[str, ...] = ()
    latest: _Moment | None = None
    last_seen: datetime | None = None  # now while somebody interacts, else the latest moment


@dataclass(frozen=True, kw_only=True)
class _Deadline(_Finding):
    """When the app stops if nothing happens: the idle timeout, pushed back by grace and snoozes."""

    stop_at: datetime


@dataclass(frozen=True, kw_only=True)
class _Culls(_Finding):
    """Kernels or terminals to shut down on their own."""

    names: tuple[str, ...] = ()


def _decide_snapshot(
    snap: ServerSnapshot, memory: Memory, settings: PolicySettings, now: datetime
) -> Decision:
    work = _work_clock(snap, memory, settings, now)
    interaction = _interaction_clock(snap, memory, settings, now)
    idle_since = max(t for t in (interaction.last_seen, work.last_seen, snap.started) if t is not None)
    deadline = _deadline(snap, settings, now, idle_since)
    kernels = _kernel_culls(snap, settings, now)
    terminals = _terminal_culls(snap, settings, now)
    findings: tuple[_Finding, ...] = (work, interaction, deadline, kernels, terminals)
    case = _Case(
        now=now,
        idle_since=idle_since,
        stop_at=deadline.stop_at,
        evidence=(*_headline(snap, work, interaction), *(r for f in findings for r in f.reasons)),
        # Something may start between two probes and end before the next: bound the sleep (README).
        soonest=min((now + settings.effective_probe_interval, *(t for f in findings for t in f.next_checks))),
        cull_kernels=kernels.names,
        cull_terminals=terminals.names,
        memory=Memory(
            last_interaction=interaction.last_seen,
            last_work=work.last_seen,
            busy_since=work.busy_since,
            pending_since=work.pending_since,
            failing_since=None,
            notice_at=memory.notice_at,
        ),
    )
    active = (*work.active, *interaction.active)
    if settings.max_age is not None:
        return _with_max_age(case, snap, settings, work, active, snap.started + settings.max_age)
    if active:
        return _in_use(case, active, settings)
    if now >= case.stop_at:
        return _past_deadline(case, snap, settings)
    return _before_deadline(case, settings)


def _with_max_age(
    case: _Case,
    snap: ServerSnapshot,
    settings: PolicySettings,
    work: _Work,
    active: tuple[str, ...],
    age_limit: datetime,
) -> Decision:
    """The maximum-age override (jupyterhub-idle-culler's ``max_age``): past it, interaction no longer
    keeps the app, but work still does: a running job is never stopped, the app stops once the work
    ends. Before it, the age limit is one more deadline, warned of like the idle one."""
    age = f"started {format_time(snap.started)}, max_age {format_duration(age_limit - snap.started)}"
    if work.active:
        if case.now < age_limit:
            return _in_use(replace(case, soonest=min(case.soonest, age_limit)), active, settings)
        kept = _in_use(case, active, settings)
        return replace(
            kept, reasons=(*kept.reasons, f"past its maximum age ({age}): stops when the work ends")
        )
    if case.now >= age_limit and (active or case.now < case.stop_at):
        summary = f"older than its maximum age ({age})"
        ignored = tuple(f"not counted past max_age: {a}" for a in active)
        return _past_deadline(
            replace(case, stop_at=age_limit, evidence=(*ignored, *case.evidence)), snap, settings, summary
        )
    if active:
        # Only interaction keeps it: the age limit is its deadline.
        kept = _in_use(replace(case, soonest=min(case.soonest, age_limit)), active, settings)
        warn_at = age_limit - settings.warn_before if settings.warn_before is not None else None
        warn = warn_at is not None and case.now >= warn_at
        return replace(
            kept,
            stop_at=age_limit,
            next_check_at=min((kept.next_check_at, *((warn_at,) if warn_at and not warn else ()))),
            reasons=(*kept.reasons, f"stops at {format_time(age_limit)} at the latest ({age})"),
            warn=warn,
        )
    if age_limit < case.stop_at:
        note = f"stops at {format_time(age_limit)}: {age}"
        case = replace(case, stop_at=age_limit, evidence=(*case.evidence, note))
    if case.now >= case.stop_at:
        return _past_deadline(case, snap, settings)
    return _before_deadline(case, settings)


def _work_clock(snap: ServerSnapshot, memory: Memory, settings: PolicySettings, now: datetime) -> _Work:
    """Busy kernels, kernels still starting, and the work signals' readings."""
    # First seen busy: it went busy no later than its last message (the busy status is one), so that
    # time is a start that never overstates the spell; `now` would restart it at every fresh look.
    busy_since = {
        k.id: memory.busy_since.get(k.id, min(now, k.last_activity))
        for k in snap.kernels
        if k.execution_state == _BUSY
    }
    pending_since = {
        k.id: memory.pending_since.get(k.id, now)
        for k in snap.kernels
        if k.execution_state != _BUSY and k.execution_state not in _SETTLED
    }
    spells = [
        _busy_spell(kernel, busy_since[kernel.id], settings.max_busy, now)
        if kernel.id in busy_since
        else _pending_spell(kernel, pending_since[kernel.id], settings.stuck_after, now)
        for kernel in snap.kernels
        if kernel.id in busy_since or kernel.id in pending_since
    ]
    readings = [r for r in snap.readings if r.clock is Clock.WORK]
    active = (
        *(s.active for s in spells if s.active),
        *(r.detail for r in readings if r.active_now),
    )
    last_seen = memory.last_work
    for reading in readings:
        if not reading.active_now and reading.at is not None:
            last_seen = _later(last_seen, reading.at)
    return _Work(
        active=active,
        last_seen=now if active else last_seen,
        busy_since=busy_since,
        pending_since=pending_since,
        reasons=tuple(s.reason for s in spells if s.reason),
        next_checks=tuple(s.next_check for s in spells if s.next_check is not None),
    )


@dataclass(frozen=True)
class _Spell:
    """One kernel's busy or starting spell: still work (``active``), or past its cap (``reason``)."""

    active: str | None = None
    reason: str | None = None
    next_check: datetime | None = None


def _busy_spell(kernel: KernelInfo, since: datetime, cap: timedelta | None, now: datetime) -> _Spell:
    if cap is None:
        return _Spell(active=f"{kernel.label} busy since {format_time(since)}")
    if now - since >= cap:
        return _Spell(
            reason=f"{kernel.label} busy since {format_time(since)}, longer than max_busy "
            f"{format_duration(cap)}: no longer counted as work"
        )
    return _Spell(active=f"{kernel.label} busy since {format_time(since)}", next_check=since + cap)


def _pending_spell(kernel: KernelInfo, since: datetime, cap: timedelta, now: datetime) -> _Spell:
    state = kernel.execution_state
    if now - since >= cap:
        return _Spell(
            reason=f"{kernel.label} stuck '{state}' since {format_time(since)}: "
            f"no longer counted as work (stuck_after {format_duration(cap)})"
        )
    return _Spell(active=f"{kernel.label} {state} since {format_time(since)}", next_check=since + cap)


def _interaction_clock(
    snap: ServerSnapshot, memory: Memory, settings: PolicySettings, now: datetime
) -> _Interaction:
    """Kernels' and terminals' last activity, open connections and the interaction signals."""
    terminals = _terminal_moments(snap.terminals, memory.notice_at, skip=settings.skip_terminals)
    connections = _connections(snap, ignore=settings.ignore_connections)
    readings = [r for r in snap.readings if r.clock is Clock.INTERACTION]
    moments = [
        *(
            _Moment(k.last_activity, f"{k.label} last active {format_time(k.last_activity)}")
            for k in snap.kernels
        ),
        *terminals.moments,
        *(_Moment(r.at, r.detail) for r in readings if not r.active_now and r.at is not None),
    ]
    if memory.last_interaction is not None:
        moments.append(
            _Moment(memory.last_interaction, f"activity remembered at {format_time(memory.last_interaction)}")
        )
    latest = max(moments, key=lambda m: m.at, default=None)
    active = (*connections.active, *(r.detail for r in readings if r.active_now))
    return _Interaction(
        active=active,
        latest=latest,
        last_seen=now if active else (latest.at if latest else None),
        reasons=(*terminals.reasons, *connections.reasons),
    )


@dataclass(frozen=True, kw_only=True)
class _Moments(_Finding):
    moments: tuple[_Moment, ...] = ()


def _terminal_moments(
    terminals: tuple[TerminalInfo, ...], notice_at: datetime | None, *, skip: bool
) -> _Moments:
    if skip:
        return _Moments(
            reasons=(f"{len(terminals)} terminal(s) left out (skip_terminals)",) if terminals else ()
        )
    ours = tuple(t for t in terminals if _own_notice(t.last_activity, notice_at))
    theirs = tuple(t for t in terminals if not _own_notice(t.last_activity, notice_at))
    return _Moments(
        moments=tuple(
            _Moment(t.last_activity, f"{t.label} last active {format_time(t.last_activity)}") for t in theirs
        ),
        reasons=tuple(
            f"{t.label} output at {format_time(t.last_activity)} was our own warning" for t in ours
        ),
    )


def _own_notice(moment: datetime, notice_at: datetime | None) -> bool:
    """Terminal output right after lamplighter wrote its warning into the terminals is not a person."""
    return notice_at is not None and notice_at <= moment <= notice_at + _NOTICE_ECHO


@dataclass(frozen=True, kw_only=True)
class _Connections(_Finding):
    active: tuple[str, ...] = ()


def _connections(snap: ServerSnapshot, *, ignore: bool) -> _Connections:
    connected = [k for k in snap.kernels if k.connections > 0]
    count = max(snap.connections, sum(k.connections for k in connected))
    if not count:
        return _Connections()
    if ignore:
        return _Connections(reasons=(f"{count} open connection(s) not counted (ignore_connections)",))
    where = ", ".join(k.label for k in connected) or "the server"
    return _Connections(active=(f"{count} open connection(s) to {where}",))


def _headline(snap: ServerSnapshot, work: _Work, interaction: _Interaction) -> tuple[str, ...]:
    """The reasons that lead the list: when work was last seen, when somebody last interacted."""
    lines: list[str] = []
    last_work = work.last_seen
    if last_work is not None and not work.active and last_work >= (interaction.last_seen or last_work):
        lines.append(f"work last seen {format_time(last_work)}")
    if not interaction.active:
        if interaction.latest is not None:
            lines.append(f"latest interaction: {interaction.latest.why}")
        else:
            lines.append(f"nothing ran since the server started at {format_time(snap.started)}")
    return tuple(lines)


def _deadline(
    snap: ServerSnapshot, settings: PolicySettings, now: datetime, idle_since: datetime
) -> _Deadline:
    """The idle timeout from ``idle_since``, pushed back by the startup grace and by snoozes."""
    stop_at = idle_since + settings.idle_timeout
    reasons: list[str] = []
    next_checks: list[datetime] = []
    grace_end = snap.started + settings.effective_startup_grace
    if grace_end > stop_at:
        stop_at = grace_end
        reasons.append(f"started {format_time(snap.started)}: startup grace until {format_time(grace_end)}")
    for reading in snap.readings:
        if reading.hold_until is not None and reading.hold_until > stop_at:
            stop_at = reading.hold_until
            reasons.append(reading.detail)
            # A snooze can be called off; look again now and then rather than only at its end.
            next_checks.append(now + settings.busy_recheck)
    return _Deadline(stop_at=stop_at, reasons=tuple(reasons), next_checks=tuple(next_checks))


# -- what to cull ------------------------------------------------------------------------------
# A kernel or terminal born after this probe is due no sooner than ``now`` plus its timeout, so
# that moment is a next check too: it is culled on time though nobody has seen it yet.


def _kernel_culls(snap: ServerSnapshot, settings: PolicySettings, now: datetime) -> _Culls:
    timeout = settings.kernel_timeout
    if timeout is None:
        return _Culls()
    return _joined(
        (_kernel_cull(k, timeout, settings.ignore_connections, now) for k in snap.kernels),
        next_checks=(now + timeout,),
    )


def _joined(parts: Iterable[_Culls], *, next_checks: tuple[datetime, ...] = ()) -> _Culls:
    """One finding from one per kernel or terminal, in their order, plus ``next_checks``."""
    found = tuple(parts)
    return _Culls(
        names=tuple(name for part in found for name in part.names),
        reasons=tuple(reason for part in found for reason in part.reasons),
        next_checks=(*next_checks, *(moment for part in found for moment in part.next_checks)),
    )


def _kernel_cull(kernel: KernelInfo, timeout: timedelta, ignore_connections: bool, now: datetime) -> _Culls:
    if kernel.execution_state == "dead":
        return _Culls(names=(kernel.id,), reasons=(f"shut down {kernel.label}: dead",))
    if kernel.execution_state != "idle" or (kernel.connections and not ignore_connections):
        return _Culls()
    if now - kernel.last_activity < timeout:
        return _Culls(next_checks=(kernel.last_activity + timeout,))
    reason = (
        f"shut down {kernel.label}: idle since {format_time(kernel.last_activity)} "
        f"(kernel_timeout {format_duration(timeout)})"
    )
    return _Culls(names=(kernel.id,), reasons=(reason,))


def _terminal_culls(snap: ServerSnapshot, settings: PolicySettings, now: datetime) -> _Culls:
    timeout = settings.terminal_timeout
    if timeout is None or settings.keep_terminals:
        return _Culls()
    # A silent job (nohup, sleep) in a terminal shows only in the process tree; while that tree is
    # busy (or may be: a signal still looking) we cannot tell which terminal owns it: none is closed.
    busy_tree = any(r.clock is Clock.WORK and (r.active_now or r.ready_at is not None) for r in snap.readings)
    return _joined(
        (_terminal_cull(t, timeout, busy_tree, now) for t in snap.terminals),
        next_checks=(now + timeout,),
    )


def _terminal_cull(terminal: TerminalInfo, timeout: timedelta, busy_tree: bool, now: datetime) -> _Culls:
    idle_for = now - terminal.last_activity
    if idle_for < timeout:
        return _Culls(next_checks=(terminal.last_activity + timeout,))
    if busy_tree:
        return _Culls(
            reasons=(f"{terminal.label} idle {format_duration(idle_for)} but processes are busy: kept",)
        )
    reason = (
        f"close {terminal.label}: idle since {format_time(terminal.last_activity)} "
        f"(terminal_timeout {format_duration(timeout)})"
    )
    return _Culls(names=(terminal.name,), reasons=(reason,))


# -- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Case:
    """All findings on one snapshot, joined, before the verdict."""

    now: datetime
    idle_since: datetime
    stop_at: datetime
    evidence: tuple[str, ...]
    soonest: datetime  # the earliest next check any finding asked for
    cull_kernels: tuple[str, ...]
    cull_terminals: tuple[str, ...]
    memory: Memory


def _in_use(case: _Case, active: tuple[str, ...], settings: PolicySettings) -> Decision:
    more = f" (+{len(active) - 1} more)" if len(active) > 1 else ""
    return Decision(
        action=Action.KEEP,
        reason=f"in use: {active[0]}{more}",
        reasons=(*active, *case.evidence),
        idle_since=None,
        stop_at=None,  # no deadline while in use: it depends on when the work ends
        # The earliest the verdict can become STOP is when the work ends plus the idle timeout.
        next_check_at=min(case.now + settings.busy_recheck, case.now + settings.idle_timeout, case.soonest),
        cull_kernels=case.cull_kernels,
        cull_terminals=case.cull_terminals,
        memory=case.memory,
    )


def _past_deadline(
    case: _Case, snap: ServerSnapshot, settings: PolicySettings, summary: str | None = None
) -> Decision:
    summary = summary or (
        f"idle for {format_duration(case.now - case.idle_since)} since {format_time(case.idle_since)}, "
        f"past the {format_duration(settings.idle_timeout)} idle timeout"
    )
    waiting = [r for r in snap.readings if r.clock is Clock.WORK and r.ready_at is not None]
    if not waiting:
        return Decision(
            action=Action.STOP,
            reason=summary,
            reasons=(summary, *case.evidence),
            idle_since=case.idle_since,
            stop_at=case.stop_at,
            next_check_at=case.now,
            memory=case.memory,
        )
    # No stop on a work signal that has not looked yet: that is how running jobs get killed.
    ready = max(min(r.ready_at for r in waiting if r.ready_at is not None), case.now + _SETTLE_MIN)
    why = f"kept until the work signals can tell (at {format_time(ready)}): {waiting[0].detail}"
    return Decision(
        action=Action.KEEP,
        reason=why,
        reasons=(why, summary, *case.evidence),
        idle_since=case.idle_since,
        stop_at=case.stop_at,
        next_check_at=min(ready, case.soonest),
        cull_kernels=case.cull_kernels,
        cull_terminals=case.cull_terminals,
        memory=case.memory,
        provisional=True,
    )


def _before_deadline(case: _Case, settings: PolicySettings) -> Decision:
    idle_for = case.now - case.idle_since
    summary = f"idle for {format_duration(idle_for)} since {format_time(case.idle_since)}; stops at {format_time(case.stop_at)}"
    warn_at = case.stop_at - settings.warn_before if settings.warn_before is not None else None
    warn = warn_at is not None and case.now >= warn_at
    later = (warn_at,) if warn_at is not None and not warn else ()
    return Decision(
        action=Action.KEEP,
        reason=summary,
        reasons=(summary, *case.evidence),
        idle_since=case.idle_since,
        stop_at=case.stop_at,
        next_check_at=min((case.stop_at, case.soonest, *later)),
        cull_kernels=case.cull_kernels,
        cull_terminals=case.cull_terminals,
        warn=warn,
        memory=case.memory,
    )


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a
