"""The pure decision: ``(observation, memory, settings, now) → Decision``. No I/O, no clock, no logging.

Two clocks, not one. The *interaction* clock moves when somebody does something (a kernel's or
terminal's ``last_activity``, an open connection when connections count, a file edit). The *work*
clock moves while something computes (a busy kernel, a kernel still starting, a busy process tree or
GPU). The app is idle when both are older than ``idle_timeout``; a fresh app is protected by
``startup_grace``. Checks run in the culler's order: guard clauses (probe failure, work running),
then one idle test, then the overrides (snooze, grace), then what to cull.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from lamplighter.model import (
    Action,
    Clock,
    Decision,
    KernelInfo,
    Memory,
    Observation,
    ProbeFailure,
    ServerSnapshot,
    dates_relative_to,
    format_duration,
    format_time,
)
from lamplighter.settings import Settings

__all__ = ["decide"]

_BUSY = "busy"
_SETTLED = frozenset({"idle", "dead"})
_RETRY_MIN = timedelta(seconds=2)
_RETRY_MAX = timedelta(seconds=60)
_NOTICE_ECHO = timedelta(seconds=2)
# A signal that said "ready at t" is asked again no sooner than this, even when t has just passed.
_SETTLE_MIN = timedelta(milliseconds=100)


@dataclass(frozen=True)
class _Moment:
    """A timestamp with the sentence that explains it."""

    at: datetime
    why: str


def decide(observation: Observation, memory: Memory, settings: Settings, now: datetime) -> Decision:
    """The verdict for one observation; ``Decision.memory`` is what to remember for the next one."""
    with dates_relative_to(now):  # reasons show a date for any time not on now's day
        if isinstance(observation, ProbeFailure):
            return _decide_unreachable(observation, memory, settings, now)
        return _decide_snapshot(observation, memory, settings, now)


def _decide_unreachable(failure: ProbeFailure, memory: Memory, settings: Settings, now: datetime) -> Decision:
    failing_since = memory.failing_since or now
    down_for = now - failing_since
    remembered = memory.evolve(failing_since=failing_since)
    retry = min(max(down_for, _RETRY_MIN), _RETRY_MAX)
    next_check = now + retry
    reasons = [
        f"probe failed: {failure.error}",
        f"failing since {format_time(failing_since)}; never counted as idle",
    ]
    limit = settings.unreachable_timeout
    if failure.unreachable and limit is not None:
        if down_for >= limit:
            if settings.unreachable_action == "stop":
                reason = f"unreachable for {format_duration(down_for)} (unreachable_timeout {format_duration(limit)})"
                return Decision(
                    Action.STOP,
                    reason,
                    (reason, *reasons),
                    None,
                    failing_since + limit,
                    now,
                    memory=remembered,
                )
            reasons.append(
                f"unreachable for {format_duration(down_for)}, past unreachable_timeout "
                f"{format_duration(limit)}: reported only (unreachable_action=report)"
            )
        else:
            next_check = min(next_check, failing_since + limit)
    reason = f"cannot tell: {failure.error}"
    return Decision(Action.SKIP, reason, tuple(reasons), None, None, next_check, memory=remembered)


def _decide_snapshot(snap: ServerSnapshot, memory: Memory, settings: Settings, now: datetime) -> Decision:
    reasons: list[str] = []
    next_checks: list[datetime] = []

    # -- the work clock: what is computing right now ------------------------------------------
    busy_since = {k.id: memory.busy_since.get(k.id, now) for k in snap.kernels if k.execution_state == _BUSY}
    pending_since = {
        k.id: memory.pending_since.get(k.id, now)
        for k in snap.kernels
        if k.execution_state != _BUSY and k.execution_state not in _SETTLED
    }
    working: list[str] = []
    for kernel in snap.kernels:
        if kernel.id in busy_since:
            since = busy_since[kernel.id]
            if settings.max_busy is not None and now - since >= settings.max_busy:
                reasons.append(
                    f"{kernel.label} busy since {format_time(since)}, longer than max_busy "
                    f"{format_duration(settings.max_busy)}: no longer counted as work"
                )
            else:
                working.append(f"{kernel.label} busy since {format_time(since)}")
                if settings.max_busy is not None:
                    next_checks.append(since + settings.max_busy)
        elif kernel.id in pending_since:
            since = pending_since[kernel.id]
            if now - since >= settings.stuck_after:
                reasons.append(
                    f"{kernel.label} stuck '{kernel.execution_state}' since {format_time(since)}: "
                    f"no longer counted as work (stuck_after {format_duration(settings.stuck_after)})"
                )
            else:
                working.append(f"{kernel.label} {kernel.execution_state} since {format_time(since)}")
                next_checks.append(since + settings.stuck_after)
    last_work = memory.last_work
    for reading in snap.readings:
        if reading.clock is not Clock.WORK:
            continue
        if reading.active_now:
            working.append(reading.detail)
        elif reading.at is not None:
            last_work = _later(last_work, reading.at)
    if working:
        last_work = now

    # -- the interaction clock: when somebody last did something ------------------------------
    moments: list[_Moment] = []
    for kernel in snap.kernels:
        moments.append(
            _Moment(kernel.last_activity, f"{kernel.label} last active {format_time(kernel.last_activity)}")
        )
    for terminal in snap.terminals:
        if settings.skip_terminals:
            continue
        if _own_notice(terminal.last_activity, memory.notice_at):
            reasons.append(
                f"{terminal.label} output at {format_time(terminal.last_activity)} was our own warning"
            )
            continue
        moments.append(
            _Moment(
                terminal.last_activity, f"{terminal.label} last active {format_time(terminal.last_activity)}"
            )
        )
    if settings.skip_terminals and snap.terminals:
        reasons.append(f"{len(snap.terminals)} terminal(s) left out (skip_terminals)")
    connected = [k for k in snap.kernels if k.connections > 0]
    connections = max(snap.connections, sum(k.connections for k in connected))
    interacting_now: list[str] = []
    if connections:
        if settings.ignore_connections:
            reasons.append(f"{connections} open connection(s) not counted (ignore_connections)")
        else:
            where = ", ".join(k.label for k in connected) or "the server"
            interacting_now.append(f"{connections} open connection(s) to {where}")
    for reading in snap.readings:
        if reading.clock is Clock.INTERACTION:
            if reading.active_now:
                interacting_now.append(reading.detail)
            elif reading.at is not None:
                moments.append(_Moment(reading.at, reading.detail))
    if memory.last_interaction is not None:
        moments.append(
            _Moment(memory.last_interaction, f"activity remembered at {format_time(memory.last_interaction)}")
        )
    latest = max(moments, key=lambda m: m.at, default=None)
    last_interaction = latest.at if latest else None
    if interacting_now:
        last_interaction = now

    remembered = Memory(
        last_interaction=last_interaction,
        last_work=last_work,
        busy_since=busy_since,
        pending_since=pending_since,
        failing_since=None,
        notice_at=memory.notice_at,
    )

    # -- the one idle test --------------------------------------------------------------------
    idle_since = max(t for t in (last_interaction, last_work, snap.started) if t is not None)
    stop_at = idle_since + settings.idle_timeout
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

    if latest is not None and not interacting_now:
        reasons.insert(0, f"latest interaction: {latest.why}")
    elif latest is None and not interacting_now:
        reasons.insert(0, f"nothing ran since the server started at {format_time(snap.started)}")
    if last_work is not None and not working and last_work >= (last_interaction or last_work):
        reasons.insert(0, f"work last seen {format_time(last_work)}")

    kernels_to_cull, terminals_to_cull = _culls(snap, settings, now, reasons, next_checks)
    # Something may start between two probes and end before the next: bound the sleep (README).
    next_checks.append(now + settings.effective_probe_interval)

    if working or interacting_now:
        active = working + interacting_now
        summary = f"in use: {active[0]}" + (f" (+{len(active) - 1} more)" if len(active) > 1 else "")
        # The earliest the verdict can become STOP is when the work ends plus the idle timeout.
        return Decision(
            Action.KEEP,
            summary,
            (*active, *reasons),
            None,
            None,  # no deadline while in use: it depends on when the work ends
            min([now + settings.busy_recheck, now + settings.idle_timeout, *next_checks]),
            kernels_to_cull,
            terminals_to_cull,
            memory=remembered,
        )
    idle_for = now - idle_since
    if now >= stop_at:
        summary = (
            f"idle for {format_duration(idle_for)} since {format_time(idle_since)}, "
            f"past the {format_duration(settings.idle_timeout)} idle timeout"
        )
        waiting = [r for r in snap.readings if r.clock is Clock.WORK and r.ready_at is not None]
        if waiting:
            # No stop on a work signal that has not looked yet: that is how running jobs get killed.
            ready = max(min(r.ready_at for r in waiting if r.ready_at is not None), now + _SETTLE_MIN)
            why = f"kept until the work signals can tell (at {format_time(ready)}): {waiting[0].detail}"
            return Decision(
                Action.KEEP,
                why,
                (why, summary, *reasons),
                idle_since,
                stop_at,
                min([ready, *next_checks]),
                kernels_to_cull,
                terminals_to_cull,
                memory=remembered,
                provisional=True,
            )
        return Decision(
            Action.STOP, summary, (summary, *reasons), idle_since, stop_at, now, memory=remembered
        )
    summary = f"idle for {format_duration(idle_for)} since {format_time(idle_since)}; stops at {format_time(stop_at)}"
    warn = False
    if settings.warn_before is not None:
        warn_at = stop_at - settings.warn_before
        if now >= warn_at:
            warn = True
        else:
            next_checks.append(warn_at)
    return Decision(
        Action.KEEP,
        summary,
        (summary, *reasons),
        idle_since,
        stop_at,
        min([stop_at, *next_checks]),
        kernels_to_cull,
        terminals_to_cull,
        warn=warn,
        memory=remembered,
    )


def _own_notice(moment: datetime, notice_at: datetime | None) -> bool:
    """Terminal output right after lamplighter wrote its warning into the terminals is not a person."""
    return notice_at is not None and notice_at <= moment <= notice_at + _NOTICE_ECHO


def _culls(
    snap: ServerSnapshot,
    settings: Settings,
    now: datetime,
    reasons: list[str],
    next_checks: list[datetime],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Kernels and terminals idle past their own timeouts; appends reasons and their next deadlines.

    A kernel or terminal born after this probe is due no sooner than ``now`` plus its timeout, so
    that moment is a next check too: it is culled on time though nobody has seen it yet.
    """
    kernels: list[str] = []
    if settings.kernel_timeout is not None:
        next_checks.append(now + settings.kernel_timeout)
        for kernel in snap.kernels:
            if _kernel_cullable(kernel, settings.kernel_timeout, settings, now, reasons, next_checks):
                kernels.append(kernel.id)
    terminals: list[str] = []
    timeout = settings.terminal_timeout
    if timeout is not None and not settings.keep_terminals:
        next_checks.append(now + timeout)
        # A silent job (nohup, sleep) in a terminal shows only in the process tree; while that tree is
        # busy (or may be: a signal still looking) we cannot tell which terminal owns it: none is closed.
        busy_tree = any(
            r.clock is Clock.WORK and (r.active_now or r.ready_at is not None) for r in snap.readings
        )
        for terminal in snap.terminals:
            idle_for = now - terminal.last_activity
            if idle_for < timeout:
                next_checks.append(terminal.last_activity + timeout)
            elif busy_tree:
                reasons.append(
                    f"{terminal.label} idle {format_duration(idle_for)} but processes are busy: kept"
                )
            else:
                terminals.append(terminal.name)
                reasons.append(
                    f"close {terminal.label}: idle since {format_time(terminal.last_activity)} "
                    f"(terminal_timeout {format_duration(timeout)})"
                )
    return tuple(kernels), tuple(terminals)


def _kernel_cullable(
    kernel: KernelInfo,
    timeout: timedelta,
    settings: Settings,
    now: datetime,
    reasons: list[str],
    next_checks: list[datetime],
) -> bool:
    if kernel.execution_state == "dead":
        reasons.append(f"shut down {kernel.label}: dead")
        return True
    if kernel.execution_state != "idle":
        return False
    if kernel.connections and not settings.ignore_connections:
        return False
    idle_for = now - kernel.last_activity
    if idle_for < timeout:
        next_checks.append(kernel.last_activity + timeout)
        return False
    reasons.append(
        f"shut down {kernel.label}: idle since {format_time(kernel.last_activity)} "
        f"(kernel_timeout {format_duration(timeout)})"
    )
    return True


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a
