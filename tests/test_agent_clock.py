"""The agent's whole loop, sleeps included, driven by a fake clock: what happens *between* probes.

Each test runs ``Agent.run`` against the fake platform; the agent's sleep moves the fake clock on
instead of waiting, so an hour of watching takes milliseconds and every deadline is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lamplighter.agent import Agent
from lamplighter.journal import Journal
from lamplighter.model import Action, ActivityReading, Clock, KernelInfo, ServerSnapshot, TerminalInfo
from lamplighter.platforms.fake import FakeServer
from lamplighter.settings import load_settings
from tests.waiting import wait_until_async

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
STARTED = T0 - timedelta(hours=3)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class FakeClock:
    """``now`` for the agent, and a sleep that moves it on (and lets other tasks run)."""

    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += timedelta(seconds=delay_s)
        await asyncio.sleep(0)


@dataclass
class ScriptedSignal:
    """A work signal whose reading is a function of the fake clock."""

    read: Callable[[datetime], ActivityReading]
    name: str = "processes"
    refreshes: list[datetime] = field(default_factory=list)
    clock: FakeClock | None = None

    async def run(self) -> None:
        await asyncio.Event().wait()

    def reading(self, now: datetime) -> ActivityReading:
        return self.read(now)

    async def refresh(self) -> None:
        if self.clock is not None:
            self.refreshes.append(self.clock.now)


def idle_work(now: datetime) -> ActivityReading:
    return ActivityReading("processes", Clock.WORK, None, "no process busy")


def harness(
    tmp_path: Path,
    snapshot: Callable[[datetime], ServerSnapshot],
    *,
    signals: tuple[ScriptedSignal, ...] = (),
    journal: Journal | None = None,
    **flags: object,
) -> tuple[Agent, FakeServer, FakeClock]:
    clock = FakeClock()
    for signal in signals:
        signal.clock = clock
    server = FakeServer(lambda: snapshot(clock.now))
    agent = Agent(
        load_settings({"process_signal": False, **flags}, env={}),
        server,
        server,
        journal or Journal(tmp_path / "j.sqlite3"),
        signals=signals,
        clock=clock,
        sleep=clock.sleep,
    )
    return agent, server, clock


def snap(*kernels: KernelInfo, terminals: tuple[TerminalInfo, ...] = ()) -> ServerSnapshot:
    return ServerSnapshot("fake://server/", STARTED, STARTED, 0, kernels, terminals)


async def test_a_kernel_that_came_and_went_between_deadlines_moves_the_stop(tmp_path: Path) -> None:
    # Idle since T0 - 30 s with a 60 s timeout: the old agent slept straight to T0 + 30 s. A kernel is
    # started at T0 + 10 s, runs cells until T0 + 18 s and is shut down at T0 + 20 s.
    def state(now: datetime) -> ServerSnapshot:
        if s(10) <= now < s(20):
            return snap(KernelInfo("k1", "python3", "idle", min(now, s(18)), 0))
        return snap()

    agent, server, clock = harness(tmp_path, state, idle_timeout="60s", startup_grace="0s")
    agent._memory = agent._memory.evolve(last_interaction=T0 - timedelta(seconds=30))
    result = await agent.run()
    assert result.stopped
    (stop,) = server.stops
    assert stop.stop_at == s(18) + timedelta(seconds=60)
    assert clock.now - stop.stop_at <= timedelta(seconds=1)


async def test_once_waits_for_the_work_signal_and_keeps_a_silent_job(tmp_path: Path) -> None:
    # Interaction is hours old (cron runs `watch --once`); a nohup job computes, but the process
    # signal needs 2 s of samples before it can tell.
    def work(now: datetime) -> ActivityReading:
        if now < s(2):
            return ActivityReading("processes", Clock.WORK, None, "first window", ready_at=s(2))
        return ActivityReading("processes", Clock.WORK, now, "pid 42 `python train.py`", active_now=True)

    agent, server, clock = harness(tmp_path, lambda now: snap(), signals=(ScriptedSignal(work),))
    result = await agent.run(once=True)
    assert server.stops == []
    assert result.decision.action is Action.KEEP and not result.decision.provisional
    assert "train.py" in result.decision.reason
    assert s(2) <= clock.now <= s(2.2)


async def test_once_stops_an_idle_app_after_the_first_window(tmp_path: Path) -> None:
    def work(now: datetime) -> ActivityReading:
        return ActivityReading(
            "processes", Clock.WORK, None, "first window", ready_at=s(2) if now < s(2) else None
        )

    agent, server, clock = harness(tmp_path, lambda now: snap(), signals=(ScriptedSignal(work),))
    result = await agent.run(once=True)
    assert result.stopped and len(server.stops) == 1
    assert clock.now >= s(2)


async def test_a_restarted_agent_does_not_stop_a_job_on_its_first_pass(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    busy_from = s(1)

    def work(now: datetime) -> ActivityReading:
        if now < busy_from + timedelta(seconds=1):
            return ActivityReading(
                "processes", Clock.WORK, None, "first window", ready_at=busy_from + timedelta(seconds=1)
            )
        return ActivityReading("processes", Clock.WORK, now, "pid 42 busy", active_now=True)

    agent, server, clock = harness(
        tmp_path, lambda now: snap(), signals=(ScriptedSignal(work),), journal=journal
    )
    clock.now = busy_from
    first, stop = await agent.check()
    assert first.action is Action.KEEP and first.provisional and stop is None
    assert first.next_check_at == busy_from + timedelta(seconds=1)
    clock.now = first.next_check_at
    second, _ = await agent.check()
    assert second.action is Action.KEEP and "pid 42 busy" in second.reason
    assert server.stops == []


async def test_the_stop_lands_on_time_after_work_ends(tmp_path: Path) -> None:
    # Work ends at T0 + 3 s; idle timeout 5 s, busy_recheck 30 s: the stop is due at T0 + 8 s.
    def work(now: datetime) -> ActivityReading:
        if now < s(3):
            return ActivityReading("processes", Clock.WORK, now, "pid 42 busy", active_now=True)
        return ActivityReading("processes", Clock.WORK, s(3), "no busy process since 3 s")

    agent, server, clock = harness(
        tmp_path, lambda now: snap(), signals=(ScriptedSignal(work),), idle_timeout="5s", busy_recheck="30s"
    )
    assert (await agent.run()).stopped
    assert server.stops[0].stop_at == s(8)
    assert s(8) <= clock.now <= s(9)


async def test_a_stop_takes_a_fresh_sample_first(tmp_path: Path) -> None:
    signal = ScriptedSignal(idle_work)
    agent, server, clock = harness(tmp_path, lambda now: snap(), signals=(signal,))
    assert (await agent.run()).stopped
    assert signal.refreshes == [T0]


async def test_a_kernel_born_after_the_first_probe_is_culled_on_time(tmp_path: Path) -> None:
    # --idle-timeout 60 --kernel-timeout 3: a kernel started at T0 + 1 s, idle from T0 + 1.5 s, is
    # culled at about T0 + 4.5 s, not at the app's own deadline a minute later.
    culled: list[datetime] = []

    def state(now: datetime) -> ServerSnapshot:
        if now >= s(1) and not culled:
            return snap(KernelInfo("k1", "python3", "idle", s(1.5), 0), terminals=(TerminalInfo("1", now),))
        return snap(terminals=(TerminalInfo("1", now),))  # somebody types: the app stays up

    agent, server, clock = harness(
        tmp_path, state, idle_timeout="60s", kernel_timeout="3s", probe_interval="1h"
    )
    original = server.cull_kernel

    async def cull(kernel_id: str) -> None:
        culled.append(clock.now)
        await original(kernel_id)

    server.cull_kernel = cull  # type: ignore[method-assign]
    while clock.now < s(10) and not culled:
        decision, _ = await agent.check()
        await clock.sleep((decision.next_check_at - clock.now).total_seconds())
    assert culled and s(4.5) <= culled[0] <= s(6)


async def test_wake_ends_the_sleep_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    server = FakeServer(lambda: snap(KernelInfo("k1", "python3", "idle", clock.now, 0)))
    agent = Agent(
        load_settings({"process_signal": False, "idle_timeout": "1h"}, env={}),
        server,
        server,
        Journal(tmp_path / "j.sqlite3"),
        clock=clock,
    )
    task = asyncio.create_task(agent.run())
    await wait_until_async(lambda: agent.probes >= 1, timeout_s=5, poll_s=0.01, what="the first probe")
    agent.wake()
    await wait_until_async(
        lambda: agent.probes >= 2, timeout_s=5, poll_s=0.01, what="wake() to end the sleep"
    )
    agent.request_exit()
    await asyncio.wait_for(task, 5)


async def test_an_app_stopped_by_somebody_else_at_its_deadline_ends_the_watch(tmp_path: Path) -> None:
    # Two agents on one server: the other one stopped it at the deadline, so this one's probe at the
    # deadline finds nothing. It makes sure through its own (idempotent) stopper and ends.
    agent, server, clock = harness(tmp_path, lambda now: snap(), idle_timeout="10s", startup_grace="0s")
    agent._memory = agent._memory.evolve(last_interaction=T0)
    first, _ = await agent.check()
    assert first.action is Action.KEEP and first.stop_at == s(10)
    server.up = False
    clock.now = s(10)
    result = await agent.run()
    assert result.stopped and "stopped answering after its stop deadline" in result.decision.reason
    assert len(server.stops) == 1


async def test_an_outage_before_the_deadline_is_never_a_stop(tmp_path: Path) -> None:
    agent, server, clock = harness(tmp_path, lambda now: snap(), idle_timeout="10s", startup_grace="0s")
    agent._memory = agent._memory.evolve(last_interaction=T0)
    await agent.check()
    server.up = False
    for moment in (5, 10, 60, 600):  # down from before its deadline: nobody can tell it was idle
        clock.now = s(moment)
        decision, stop = await agent.check()
        assert decision.action is Action.SKIP and stop is None
    assert server.stops == []


async def test_an_app_gone_while_a_signal_was_still_looking_ends_too(tmp_path: Path) -> None:
    # Past its deadline, kept only because the process signal had not finished its first window,
    # when the other agent stopped it.
    def work(now: datetime) -> ActivityReading:
        return ActivityReading(
            "processes", Clock.WORK, None, "first window", ready_at=now + timedelta(seconds=1)
        )

    signal = ScriptedSignal(work)
    agent, server, clock = harness(tmp_path, lambda now: snap(), signals=(signal,), idle_timeout="10s")
    first, _ = await agent.check()
    assert first.provisional
    server.up = False
    clock.now = first.next_check_at
    result = await agent.run()
    assert result.stopped and len(server.stops) == 1
