"""The agent with the fake platform and a controlled clock: journaling, memory, culls, stop outcomes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from lamplighter.agent import Agent
from lamplighter.journal import Journal
from lamplighter.model import Action, KernelInfo, ServerSnapshot, StopOutcome
from lamplighter.platforms.fake import FakeServer
from lamplighter.settings import load_settings
from lamplighter.stoppers import DryRun

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def make(
    tmp_path: Path, kernels: list[KernelInfo], **flags: object
) -> tuple[Agent, FakeServer, Clock, Journal]:
    clock = Clock()
    server = FakeServer(lambda: ServerSnapshot("fake://server/", T0, T0, 0, tuple(kernels)))
    journal = Journal(tmp_path / "j.sqlite3")
    agent = Agent(load_settings(flags, env={}), server, server, journal, clock=clock)
    return agent, server, clock, journal


async def test_journals_only_changed_decisions_and_remembers(tmp_path: Path) -> None:
    kernels = [KernelInfo("k1", "python3", "idle", T0 + timedelta(minutes=1), 0)]
    agent, server, clock, journal = make(tmp_path, kernels, idle_timeout="10m")
    clock.now = T0 + timedelta(minutes=2)
    first, _ = await agent.check()
    clock.now = T0 + timedelta(minutes=3)
    second, _ = await agent.check()
    assert first.stop_at == second.stop_at == T0 + timedelta(minutes=11)
    assert [e.kind for e in journal.events()] == ["decision"]
    # The kernel goes away; a new agent (a restart) still knows when it was last active.
    kernels.clear()
    restarted = Agent(load_settings({"idle_timeout": "10m"}, env={}), server, server, journal, clock=clock)
    decision, _ = await restarted.check()
    assert decision.stop_at == T0 + timedelta(minutes=11)


async def test_stop_is_journaled_with_overshoot(tmp_path: Path) -> None:
    agent, server, clock, journal = make(tmp_path, [], idle_timeout="10m")
    clock.now = T0 + timedelta(minutes=10, seconds=1)
    result = await agent.run()
    assert result.stopped
    assert len(server.stops) == 1
    action = journal.events(kind="action")[-1]
    assert action.verdict == "stopped"
    assert action.detail["overshoot_s"] == 1.0


async def test_first_probe_failure_is_skip_not_idle(tmp_path: Path) -> None:
    agent, server, clock, journal = make(tmp_path, [], idle_timeout="10m")
    server.up = False
    clock.now = T0 + timedelta(hours=5)
    decision, stop = await agent.check()
    assert decision.action is Action.SKIP
    assert stop is None
    assert server.stops == []


async def test_dry_run_culls_and_stops_nothing(tmp_path: Path) -> None:
    kernels = [KernelInfo("k1", "python3", "idle", T0, 0)]
    agent, server, clock, journal = make(
        tmp_path, kernels, idle_timeout="1h", kernel_timeout="5m", dry_run=True
    )
    clock.now = T0 + timedelta(minutes=6)
    decision, _ = await agent.check()
    assert decision.cull_kernels == ("k1",)
    assert server.culled_kernels == []
    assert "would shut down kernel k1" in journal.events(kind="action")[-1].summary
    # Said once while it stays cullable: the checks after it add no rows.
    for minutes in (7, 8, 9):
        clock.now = T0 + timedelta(minutes=minutes)
        await agent.check()
    assert [e.summary for e in journal.events(kind="action")] == ["would shut down kernel k1"]


async def test_a_kernel_still_listed_after_its_cull_is_said_once_and_culled_afresh_after_use(
    tmp_path: Path,
) -> None:
    # The fake server answers every cull and keeps listing the kernel, as a server that cannot end it.
    kernels = [KernelInfo("k1", "python3", "idle", T0, 0)]
    agent, server, clock, journal = make(tmp_path, kernels, idle_timeout="1h", kernel_timeout="5m")
    for seconds in (360, 362, 364, 366, 368, 380):
        clock.now = T0 + timedelta(seconds=seconds)
        await agent.check()
    assert server.culled_kernels == ["k1"]
    rows = journal.events(kind="action")
    assert [r.verdict for r in rows] == ["done", "failed"], [r.summary for r in rows]
    assert rows[1].summary.startswith("kernel k1 is still open 6s after the server answered its shutdown")
    # Used again, then idle past its timeout: a new cull, not a survivor of the old one.
    kernels[0] = KernelInfo("k1", "python3", "idle", T0 + timedelta(seconds=390), 0)
    for seconds in (391, 700):
        clock.now = T0 + timedelta(seconds=seconds)
        await agent.check()
    assert server.culled_kernels == ["k1", "k1"]


async def test_an_outage_past_unreachable_timeout_is_reported_once(tmp_path: Path) -> None:
    agent, server, clock, journal = make(tmp_path, [], idle_timeout="1h", unreachable_timeout="15m")
    server.up = False
    for minutes in (1, 10, 16, 20, 30):
        clock.now = T0 + timedelta(minutes=minutes)
        decision, stop = await agent.check()
        assert decision.action is Action.SKIP and stop is None
    rows = [e.summary for e in journal.events(kind="decision")]
    assert len(rows) == 2, rows
    assert rows[0].startswith("cannot tell: ")
    assert "past unreachable_timeout 15m" in rows[1] and "unreachable_action=report" in rows[1], rows


async def test_still_stopping_is_not_stopped(tmp_path: Path) -> None:
    agent, server, clock, journal = make(tmp_path, [], idle_timeout="10m")
    server.stop_outcome = StopOutcome.STOPPING
    clock.now = T0 + timedelta(minutes=11)
    decision, stop = await agent.check()
    assert stop is not None and stop.outcome is StopOutcome.STOPPING
    assert journal.events(kind="action")[-1].verdict == "stopping"


async def test_dry_run_says_would_stop_once_per_verdict(tmp_path: Path) -> None:
    _, server, clock, journal = make(tmp_path, [], idle_timeout="10m", dry_run=True)
    agent = Agent(
        load_settings({"idle_timeout": "10m"}, env={}), server, DryRun(server), journal, clock=clock
    )
    clock.now = T0 + timedelta(minutes=11)
    for _ in range(3):
        decision, stop = await agent.check()
        clock.now += timedelta(seconds=30)
    assert decision.action is Action.STOP
    assert stop is not None and stop.outcome is StopOutcome.SKIPPED
    assert server.stops == []
    (action,) = journal.events(kind="action")
    assert action.summary.startswith("stop skipped: dry run: would stop with fake stop")
