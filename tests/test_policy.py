"""The pure policy, table-driven: each rule of the two clocks with a fixed ``now``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from lamplighter.model import (
    Action,
    ActivityReading,
    Clock,
    KernelInfo,
    Memory,
    ProbeFailure,
    ServerSnapshot,
    TerminalInfo,
    parse_timestamp,
)
from lamplighter.policy import decide
from lamplighter.settings import Settings, load_settings

NOW = datetime(2026, 11, 22, 14, 0, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def settings(**flags: Any) -> Settings:
    return load_settings(flags, env={})


def kernel(
    state: str = "idle", active: datetime | None = None, *, kid: str = "3f2a0000-k", conns: int = 0
) -> KernelInfo:
    return KernelInfo(kid, "python3", state, active or ago(minutes=90), conns, "analysis.ipynb")


def snap(
    *,
    kernels: tuple[KernelInfo, ...] = (),
    terminals: tuple[TerminalInfo, ...] = (),
    started: datetime | None = None,
    connections: int = 0,
    readings: tuple[ActivityReading, ...] = (),
) -> ServerSnapshot:
    started = started or ago(hours=5)
    return ServerSnapshot("http://t/", started, started, connections, kernels, terminals, readings)


def test_idle_kernel_past_timeout_stops_with_reason() -> None:
    d = decide(snap(kernels=(kernel(active=ago(minutes=61)),)), Memory(), settings(), NOW)
    assert d.action is Action.STOP
    assert d.idle_since == ago(minutes=61)
    assert "idle for 1h01m" in d.reason
    assert any("kernel 3f2a (python3, analysis.ipynb) last active 12:59:00 UTC" in r for r in d.reasons)


def test_idle_kernel_before_timeout_keeps_and_sleeps_until_deadline() -> None:
    d = decide(snap(kernels=(kernel(active=ago(minutes=20)),)), Memory(), settings(), NOW)
    assert d.action is Action.KEEP
    assert d.stop_at == ago(minutes=20) + HOUR
    # While idle the agent looks again at the deadline, or after probe_interval if that is sooner,
    # so a kernel that comes and goes in between is seen.
    assert d.next_check_at == NOW + timedelta(minutes=1)
    lazy = decide(
        snap(kernels=(kernel(active=ago(minutes=20)),)), Memory(), settings(probe_interval="2h"), NOW
    )
    assert lazy.next_check_at == lazy.stop_at


@pytest.mark.parametrize("state", ["busy"])
def test_busy_kernel_is_work_now_however_old_its_activity(state: str) -> None:
    d = decide(snap(kernels=(kernel(state, ago(hours=4)),)), Memory(), settings(), NOW)
    assert d.action is Action.KEEP
    assert d.reason.startswith("in use: kernel 3f2a (python3, analysis.ipynb) busy since")
    assert d.next_check_at == NOW + timedelta(seconds=30)
    assert d.memory.last_work == NOW


def test_max_busy_caps_a_busy_kernel() -> None:
    memory = Memory(busy_since={"3f2a0000-k": ago(hours=3)})
    d = decide(snap(kernels=(kernel("busy", ago(hours=3)),)), memory, settings(max_busy="2h"), NOW)
    assert d.action is Action.STOP
    assert any("longer than max_busy" in r for r in d.reasons)


def test_busy_since_is_remembered_across_probes() -> None:
    first = decide(snap(kernels=(kernel("busy", ago(minutes=2)),)), Memory(), settings(), NOW)
    output = kernel("busy", NOW + timedelta(minutes=4))  # its output moved last_activity on
    later = decide(snap(kernels=(output,)), first.memory, settings(), NOW + timedelta(minutes=5))
    assert later.memory.busy_since["3f2a0000-k"] == ago(minutes=2)


def test_a_kernel_first_seen_busy_is_busy_since_its_last_message_not_since_the_probe() -> None:
    # Its busy status message set last_activity: a fresh look (status, a restart) tells the same start.
    d = decide(snap(kernels=(kernel("busy", ago(minutes=3)),)), Memory(), settings(), NOW)
    assert d.memory.busy_since["3f2a0000-k"] == ago(minutes=3)
    assert ago(minutes=3).strftime("%H:%M:%S") == "13:57:00"
    assert any("busy since 13:57:00 UTC" in r for r in d.reasons), d.reasons
    # A clock ahead of ours never puts the start after now.
    ahead = decide(snap(kernels=(kernel("busy", NOW + timedelta(seconds=5)),)), Memory(), settings(), NOW)
    assert ahead.memory.busy_since["3f2a0000-k"] == NOW


@pytest.mark.parametrize("state", ["starting", "restarting", "unknown", "autorestarting"])
def test_pending_kernel_counts_until_stuck_after(state: str) -> None:
    fresh = decide(snap(kernels=(kernel(state),)), Memory(), settings(), NOW)
    assert fresh.action is Action.KEEP
    assert fresh.next_check_at <= NOW + timedelta(seconds=30)
    stuck = decide(
        snap(kernels=(kernel(state),)), Memory(pending_since={"3f2a0000-k": ago(minutes=11)}), settings(), NOW
    )
    assert stuck.action is Action.STOP
    assert any("stuck" in r for r in stuck.reasons)


def test_terminal_activity_counts_unless_skipped() -> None:
    s = snap(kernels=(kernel(active=ago(hours=2)),), terminals=(TerminalInfo("1", ago(minutes=5)),))
    assert decide(s, Memory(), settings(), NOW).action is Action.KEEP
    skipped = decide(s, Memory(), settings(skip_terminals=True), NOW)
    assert skipped.action is Action.STOP
    assert any("skip_terminals" in r for r in skipped.reasons)


def test_connections_count_only_when_not_ignored() -> None:
    s = snap(kernels=(kernel(active=ago(hours=2), conns=1),), connections=1)
    ignored = decide(s, Memory(), settings(), NOW)
    assert ignored.action is Action.STOP
    assert any("not counted (ignore_connections)" in r for r in ignored.reasons)
    counted = decide(s, Memory(), settings(ignore_connections=False), NOW)
    assert counted.action is Action.KEEP
    assert "open connection" in counted.reason


def test_no_kernels_left_uses_remembered_activity_not_first_seen_empty() -> None:
    memory = Memory(last_interaction=ago(minutes=10))
    d = decide(snap(), memory, settings(), NOW)
    assert d.action is Action.KEEP
    assert d.idle_since == ago(minutes=10)
    assert any("remembered" in r for r in d.reasons)


def test_app_that_never_ran_anything_is_measured_from_its_start() -> None:
    assert decide(snap(started=ago(minutes=30)), Memory(), settings(), NOW).stop_at == ago(minutes=30) + HOUR
    d = decide(snap(started=ago(minutes=61)), Memory(), settings(), NOW)
    assert d.action is Action.STOP
    assert any("nothing ran since the server started" in r for r in d.reasons)


def test_startup_grace_protects_a_fresh_app() -> None:
    d = decide(snap(started=ago(minutes=2)), Memory(), settings(idle_timeout="60s", startup_grace="10m"), NOW)
    assert d.action is Action.KEEP
    assert d.stop_at == ago(minutes=2) + timedelta(minutes=10)
    assert any("startup grace" in r for r in d.reasons)


def test_restarted_server_counts_from_its_new_start() -> None:
    memory = Memory(last_interaction=ago(hours=3))
    d = decide(snap(started=ago(minutes=5)), memory, settings(), NOW)
    assert d.action is Action.KEEP
    assert d.idle_since == ago(minutes=5)


def test_probe_failure_is_never_idle() -> None:
    d = decide(
        ProbeFailure("http://t/", "cannot connect"), Memory(last_interaction=ago(days=3)), settings(), NOW
    )
    assert d.action is Action.SKIP
    assert d.memory.failing_since == NOW
    assert d.memory.last_interaction == ago(days=3)  # nothing remembered is lost


def test_unreachable_timeout_reports_then_stops_if_configured() -> None:
    failure = ProbeFailure("http://t/", "cannot connect")
    memory = Memory(failing_since=ago(minutes=20))
    reported = decide(failure, memory, settings(unreachable_timeout="15m"), NOW)
    assert reported.action is Action.SKIP
    assert any("reported only" in r for r in reported.reasons)
    stopped = decide(failure, memory, settings(unreachable_timeout="15m", unreachable_action="stop"), NOW)
    assert stopped.action is Action.STOP
    early = decide(failure, Memory(failing_since=ago(minutes=14)), settings(unreachable_timeout="15m"), NOW)
    assert early.next_check_at <= ago(minutes=14) + timedelta(minutes=15)


def test_kernel_and_terminal_culling() -> None:
    s = snap(
        kernels=(
            kernel(active=ago(minutes=20), kid="aaaa-old"),
            kernel(active=ago(minutes=2), kid="bbbb-new"),
        ),
        terminals=(TerminalInfo("1", ago(minutes=20)), TerminalInfo("2", ago(minutes=1))),
    )
    d = decide(s, Memory(), settings(kernel_timeout="10m", terminal_timeout="10m", probe_interval="2h"), NOW)
    assert d.action is Action.KEEP
    assert d.cull_kernels == ("aaaa-old",)
    assert d.cull_terminals == ("1",)
    assert d.next_check_at == ago(minutes=2) + timedelta(minutes=10)  # the next kernel's deadline
    kept = decide(s, Memory(), settings(terminal_timeout="10m", keep_terminals=True), NOW)
    assert kept.cull_terminals == ()


def test_busy_kernel_is_never_culled() -> None:
    d = decide(snap(kernels=(kernel("busy", ago(hours=2)),)), Memory(), settings(kernel_timeout="10m"), NOW)
    assert d.cull_kernels == ()


def test_busy_process_tree_keeps_app_and_idle_terminals() -> None:
    reading = ActivityReading("processes", Clock.WORK, NOW, "pid 4242 `python train.py` used 97 % CPU", True)
    s = snap(terminals=(TerminalInfo("1", ago(hours=2)),), readings=(reading,))
    d = decide(s, Memory(), settings(terminal_timeout="10m"), NOW)
    assert d.action is Action.KEEP
    assert "pid 4242" in d.reason
    assert d.cull_terminals == ()


def test_file_edit_reading_moves_the_interaction_clock() -> None:
    reading = ActivityReading(
        "files", Clock.INTERACTION, ago(minutes=3), "file notes.md changed at 13:57:00 UTC"
    )
    d = decide(snap(readings=(reading,)), Memory(), settings(), NOW)
    assert d.idle_since == ago(minutes=3)
    assert any("notes.md" in r for r in d.reasons)


def test_snooze_holds_the_deadline() -> None:
    hold = ActivityReading(
        "keep-alive", Clock.INTERACTION, None, "snoozed until 15:00:00 UTC", hold_until=NOW + HOUR
    )
    d = decide(snap(readings=(hold,)), Memory(), settings(), NOW)
    assert d.action is Action.KEEP
    assert d.stop_at == NOW + HOUR
    assert d.next_check_at == NOW + timedelta(seconds=30)  # `snooze off` takes effect soon


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T01:31:03.121346Z", datetime(2026, 11, 22, 1, 31, 3, 121346, tzinfo=timezone.utc)),
        ("2026-11-22T01:31:03Z", datetime(2026, 11, 22, 1, 31, 3, tzinfo=timezone.utc)),
        ("2026-11-22T01:31:03+00:00", datetime(2026, 11, 22, 1, 31, 3, tzinfo=timezone.utc)),
        ("2026-11-22T02:31:03.5+01:00", datetime(2026, 11, 22, 1, 31, 3, 500000, tzinfo=timezone.utc)),
        ("2026-11-22T01:31:03", datetime(2026, 11, 22, 1, 31, 3, tzinfo=timezone.utc)),
    ],
)
def test_parse_timestamp_any_form(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


def test_memory_round_trips_and_survives_damage() -> None:
    memory = Memory(last_interaction=ago(minutes=1), busy_since={"k": ago(minutes=2)}, failing_since=NOW)
    assert Memory.from_json(memory.to_json()) == memory
    assert Memory.from_json("{not json") == Memory()


# -- running work on every path: a signal that has not looked, short timeouts, culls on time -----


def work(
    *, ready_in: timedelta | None = None, active: bool = False, at: datetime | None = None
) -> ActivityReading:
    return ActivityReading(
        "processes",
        Clock.WORK,
        NOW if active else at,
        "pid 42 `python train.py` used 97 % CPU"
        if active
        else "waiting for the process signal's first window",
        active_now=active,
        ready_at=NOW + ready_in if ready_in is not None else None,
    )


def test_no_stop_while_a_work_signal_has_not_looked() -> None:
    s = snap(kernels=(kernel(active=ago(hours=2)),), readings=(work(ready_in=timedelta(seconds=4)),))
    d = decide(s, Memory(), settings(), NOW)
    assert d.action is Action.KEEP and d.provisional
    assert d.next_check_at == NOW + timedelta(seconds=4)
    assert "first window" in d.reason
    # Once it has looked and seen nothing, the same app stops.
    ready = decide(
        snap(kernels=(kernel(active=ago(hours=2)),), readings=(work(),)), Memory(), settings(), NOW
    )
    assert ready.action is Action.STOP and not ready.provisional


def test_a_signal_still_looking_keeps_terminals_too() -> None:
    s = snap(terminals=(TerminalInfo("1", ago(hours=2)),), readings=(work(ready_in=timedelta(seconds=1)),))
    d = decide(s, Memory(), settings(terminal_timeout="10m"), NOW)
    assert d.cull_terminals == ()


def test_after_work_the_next_check_is_never_later_than_the_idle_timeout() -> None:
    s = snap(kernels=(kernel(active=ago(hours=2)),), readings=(work(active=True),))
    d = decide(s, Memory(), settings(idle_timeout="5s", busy_recheck="30s"), NOW)
    assert d.action is Action.KEEP
    assert d.next_check_at <= NOW + timedelta(seconds=5)


def test_kernels_not_seen_yet_are_culled_on_time() -> None:
    fresh = snap(started=ago(seconds=10))  # no kernel yet; one may be born right after this probe
    d = decide(fresh, Memory(), settings(idle_timeout="60s", kernel_timeout="3s", probe_interval="1h"), NOW)
    assert d.next_check_at == NOW + timedelta(seconds=3)
    t = decide(fresh, Memory(), settings(idle_timeout="60s", terminal_timeout="4s", probe_interval="1h"), NOW)
    assert t.next_check_at == NOW + timedelta(seconds=4)


def test_decision_has_one_json_form() -> None:
    d = decide(snap(kernels=(kernel(active=ago(minutes=20)),)), Memory(), settings(), NOW)
    body = d.to_dict()
    assert body["verdict"] == "keep" and body["stop_at"] == (ago(minutes=20) + HOUR).isoformat()
    assert set(body) == {
        "verdict",
        "reason",
        "reasons",
        "idle_since",
        "stop_at",
        "next_check_at",
        "cull_kernels",
        "cull_terminals",
        "provisional",
    }
