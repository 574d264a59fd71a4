"""The watch loop: probe → decide → act → journal → sleep until the verdict could change.

Activity can only move a deadline later, so the agent wakes at ``Decision.next_check_at`` (the
deadline, a cull deadline, the end of a work signal's first window, or at most ``probe_interval``
away), probes, and acts on that fresh probe. That is how the stop lands within a second of its
deadline. Before acting on a STOP, the work signals take one fresh sample and the verdict is taken
again, so a job begun a moment ago is not killed. ``now`` is read here, after the probe.

:meth:`Agent.assess` is the one observation path (probe + every signal + keep-alive/snooze +
memory → decision) shared by ``watch``, ``watch --once``, ``status`` and the in-server extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from lamplighter.errors import AuthRejected, LamplighterError, NotFound, RemoteError
from lamplighter.heartbeat import heartbeat_log_line, write_heartbeat
from lamplighter.journal import Journal
from lamplighter.model import (
    Action,
    Decision,
    Observation,
    ProbeFailure,
    StopOutcome,
    StopResult,
    format_duration,
    format_time,
)
from lamplighter.notices import Notifier
from lamplighter.platforms.base import Probe, Stopper
from lamplighter.policy import decide
from lamplighter.settings import Settings
from lamplighter.signals import Signal

__all__ = ["Agent", "WatchResult", "exit_on_signals", "utcnow"]

logger = logging.getLogger(__name__)
_heartbeat_logger = logging.getLogger("lamplighter.heartbeat")

_MIN_SLEEP_S = 0.001
# A proxy or hub in front of the server answers these when the server behind it is not running.
_PROXY_SAYS_DOWN = frozenset({424, 502, 503})
#: How long after a shutdown was answered the server may still list what it closed.
_CULL_SETTLE = timedelta(seconds=5)


def utcnow() -> datetime:
    """The agent's clock; tests replace it on the Agent."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class WatchResult:
    """How a watch ended: the last decision and, if a stop was attempted, its result."""

    decision: Decision
    stop: StopResult | None

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.outcome is StopOutcome.STOPPED


class Agent:
    """Watches one target until it is stopped, or until asked to exit."""

    def __init__(
        self,
        settings: Settings,
        probe: Probe,
        stopper: Stopper,
        journal: Journal,
        *,
        signals: Sequence[Signal] = (),
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.probe = probe
        self.stopper = stopper
        self.journal = journal
        self.signals = tuple(signals)
        self.clock = clock
        # Tests drive the loop with a fake clock whose sleep moves time on; None: real waiting.
        self._sleep = sleep
        self.on_decision = on_decision
        self.notifier = notifier
        self._warned_for: datetime | None = None
        self._skipped: StopResult | None = None
        self._stop_failed = False  # the last stop failed (refused, unreachable) and said so
        self._dry_culls: set[tuple[str, str]] = set()  # (kind, name) whose dry cull was journaled
        self._culled: dict[tuple[str, str], datetime] = {}  # (kind, name) -> when its shutdown was answered
        self._survivors: set[tuple[str, str]] = set()  # culled, still listed, and said so
        self.probes = 0
        self._alarm = asyncio.Event()  # set by request_exit() and wake(): ends the current sleep
        self._exit_requested = False
        self._last: Decision | None = None
        self._memory = journal.load_memory(probe.target)
        self._heartbeat_at: datetime | None = None
        self._heartbeat_logged_at: datetime | None = None

    @property
    def target(self) -> str:
        return self.probe.target

    def request_exit(self) -> None:
        """Finish the current pass, then return from :meth:`run` (SIGTERM / first Ctrl-C)."""
        self._exit_requested = True
        self._alarm.set()

    def wake(self) -> None:
        """Look again now (a kernel or terminal was just started): the current sleep ends early."""
        self._alarm.set()

    # -- one pass -----------------------------------------------------------------------------

    async def _probe(self) -> Observation:
        """Probe once; a failure becomes a :class:`ProbeFailure` observation, never an exception."""
        self.probes += 1
        try:
            return await self.probe.snapshot()
        except RemoteError as exc:
            # A wrong token or base URL on the very first probe is a configuration error, not an
            # outage; a server that does not answer yet (an app still starting) is waited for.
            if self._last is None and isinstance(exc, AuthRejected | NotFound):
                raise
            down = exc.status is None or exc.status in _PROXY_SAYS_DOWN
            return ProbeFailure(self.target, str(exc), unreachable=down)

    def _with_readings(self, observation: Observation, now: datetime) -> Observation:
        if not self.signals or isinstance(observation, ProbeFailure):
            return observation
        readings = tuple(signal.reading(now) for signal in self.signals)
        return replace(observation, readings=observation.readings + readings)

    async def observe(self) -> Observation:
        """Probe once and add every signal's reading."""
        return self._with_readings(await self._probe(), self.clock())

    async def assess(self) -> tuple[Decision, datetime]:
        """The verdict now and the ``now`` it was taken at: probe, read the signals, decide. Acts on nothing.

        A STOP is taken again after the work signals sampled once more, on the same probe: a job
        begun since their last sample keeps the app.
        """
        probed = await self._probe()
        now = self.clock()
        decision = decide(self._with_readings(probed, now), self._memory, self.settings, now)
        if decision.action is Action.STOP and self.signals:
            await asyncio.gather(*(signal.refresh() for signal in self.signals))
            now = self.clock()
            decision = decide(self._with_readings(probed, now), self._memory, self.settings, now)
        return self._gone_past_deadline(decision, probed, now), now

    def _gone_past_deadline(self, decision: Decision, probed: Observation, now: datetime) -> Decision:
        """An app that stopped answering after its stop deadline was stopped by somebody else (a second
        agent, a person): make sure with the stopper (idempotent; gone is done) rather than watch it forever.

        Only past a deadline the previous probe saw idle (a provisional keep included: the app was idle,
        only a work signal was still looking): an outage at any other time is never idleness.
        """
        last = self._last
        if not (
            decision.action is Action.SKIP
            and isinstance(probed, ProbeFailure)
            and probed.unreachable
            and last is not None
            and last.action is Action.KEEP
            and last.stop_at is not None
            and now >= last.stop_at
        ):
            return decision
        reason = (
            f"stopped answering after its stop deadline {format_time(last.stop_at)} ({probed.error}): "
            "making sure it is stopped"
        )
        return Decision(
            action=Action.STOP,
            reason=reason,
            reasons=(reason, *last.reasons),
            idle_since=last.idle_since,
            stop_at=last.stop_at,
            next_check_at=now,
            memory=decision.memory,
        )

    async def check(self) -> tuple[Decision, StopResult | None]:
        """Probe, decide, journal and act once."""
        try:
            decision, now = await self.assess()
        except (AuthRejected, NotFound) as exc:
            # A first probe refused (wrong token, wrong base URL) ends the watch as a configuration
            # error; the journal still says that this check decided nothing, and why.
            now = self.clock()
            refused = decide(ProbeFailure(self.target, str(exc)), self._memory, self.settings, now)
            self.journal.record_decision(self.target, refused, at=now)
            raise
        self._remember(decision, now)
        if decision.warn and self.notifier is not None and self._warned_for != decision.stop_at:
            await self._warn(self.notifier, decision, now)
        await self._cull(decision, now)
        stop = None
        if decision.action is Action.STOP:
            repeat = not decision.changed_from(self._last) and self._skipped is not None
            # A dry run or --action none says "would stop" once per verdict, not on every re-check.
            stop = self._skipped if repeat else await self._stop(decision, now)
            self._skipped = stop if stop is not None and stop.outcome is StopOutcome.SKIPPED else None
        self._last = decision
        self._write_heartbeat(decision, now)
        return decision, stop

    def _remember(self, decision: Decision, now: datetime) -> None:
        if decision.memory != self._memory:
            self.journal.save_memory(self.target, decision.memory, at=now)
            self._memory = decision.memory
        if self.on_decision is not None:
            self.on_decision(decision)
        if decision.changed_from(self._last):
            self.journal.record_decision(self.target, decision, at=now)
            log = logger.warning if decision.action is Action.SKIP else logger.info
            log("%s: %s: %s", self.target, decision.action.value, decision.reason)
            for line in decision.reasons[1:]:
                logger.debug("  %s", line)
        else:
            logger.debug("%s: %s (unchanged)", self.target, decision.reason)

    async def _warn(self, notifier: Notifier, decision: Decision, now: datetime) -> None:
        self._warned_for = decision.stop_at
        detail = await notifier.warn(decision)
        self._memory = self._memory.evolve(notice_at=now)
        self.journal.save_memory(self.target, self._memory, at=now)
        logger.info("%s: warned: %s", self.target, detail)
        self.journal.record(
            self.target, "warn", detail, at=now, stop_at=decision.stop_at, idle_since=decision.idle_since
        )

    async def _cull(self, decision: Decision, now: datetime) -> None:
        parts: list[tuple[str, str, Callable[[str], Awaitable[None]]]] = [
            ("kernel", k, self.probe.cull_kernel) for k in decision.cull_kernels
        ]
        parts += [("terminal", t, self.probe.cull_terminal) for t in decision.cull_terminals]
        wanted = {(kind, name) for kind, name, _ in parts}
        # A dry cull is said once per kernel or terminal while it stays cullable, not at every check.
        said, self._dry_culls = self._dry_culls, wanted
        # What is no longer cullable (gone, or active again) is forgotten: culled afresh when idle again.
        self._culled = {key: at for key, at in self._culled.items() if key in wanted}
        self._survivors &= wanted
        for kind, name, cull in parts:
            if self.settings.dry_run or self.settings.action == "none":
                if (kind, name) in said:
                    continue
                outcome, detail = "skipped", f"would shut down {kind} {name}"
            elif (kind, name) in self._culled:
                found = self._survivor(kind, name, now)
                if found is None:
                    continue
                outcome, detail = "failed", found
            else:
                try:
                    await cull(name)
                    outcome, detail = "done", f"shut down {kind} {name}"
                    self._culled[(kind, name)] = now
                except LamplighterError as exc:
                    logger.exception("%s: cannot shut down %s %s", self.target, kind, name)
                    outcome, detail = "failed", f"cannot shut down {kind} {name}: {exc}"
            (logger.warning if (kind, name) in self._survivors else logger.info)(
                "%s: %s", self.target, detail
            )
            self.journal.record(self.target, "action", detail, at=now, verdict=outcome, detail={"cull": kind})

    def _survivor(self, kind: str, name: str, now: datetime) -> str | None:
        """A kernel or terminal the server answered a shutdown for and still lists: said once, not culled
        again at every check (its row would claim a shutdown each time). None: nothing to say yet."""
        culled_at = self._culled[(kind, name)]
        # A server drops a closed terminal from its list a moment after answering: not a survivor yet.
        if (kind, name) in self._survivors or now - culled_at < _CULL_SETTLE:
            return None
        self._survivors.add((kind, name))
        why = (
            " (a process on it may ignore SIGHUP, as under nohup, and keep it open)"
            if kind == "terminal"
            else ""
        )
        return (
            f"{kind} {name} is still open {format_duration(now - culled_at)} after the server answered "
            f"its shutdown at {format_time(culled_at)}; left as it is{why}"
        )

    async def _stop(self, decision: Decision, now: datetime) -> StopResult:
        # After a failure (logged, and journaled once per refusal) the tries that follow, and the
        # rechecks while a refusal waits out its backoff, are not a new "stopping" each.
        log = logger.debug if self._stop_failed else logger.info
        log("%s: stopping with %s: %s", self.target, self.stopper.description, decision.reason)
        result = await self.stopper.stop(decision)
        self._stop_failed = result.outcome is StopOutcome.FAILED
        if result.again:
            logger.debug("%s: stop %s: %s", self.target, result.outcome.value, result.detail)
            return result
        log = logger.error if result.outcome is StopOutcome.FAILED else logger.info
        log("%s: stop %s: %s", self.target, result.outcome.value, result.detail)
        self.journal.record_stop(
            self.target,
            decision,
            summary=f"stop {result.outcome.value}: {result.detail}",
            outcome=result.outcome.value,
            stopper=self.stopper.description,
            decided_at=now,
            done_at=self.clock(),
        )
        return result

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, *, once: bool = False, claimed: bool = False) -> WatchResult:
        """Watch until the app is stopped (or ``once``, or :meth:`request_exit`).

        ``once`` decides once and acts; while a work signal cannot tell yet (its first window), it
        waits for it first, bounded by :meth:`settle_limit`. One agent per target: the journal's claim
        on the target is held meanwhile, unless ``claimed`` says the caller holds a wider one (the hub
        service claims its hub once: a claim per server is a file descriptor per server).
        """
        if claimed:
            return await self._watch(once)
        with self.journal.claim(self.target):
            return await self._watch(once)

    async def _watch(self, once: bool) -> WatchResult:
        self.journal.record(
            self.target,
            "agent",
            f"watching with {self.stopper.description}",
            at=self.clock(),
            detail={"pid": os.getpid(), "settings": self.settings.redacted()},
        )
        async with self._signals_running():
            return await self._loop(once)

    async def settle(self) -> Decision:
        """The verdict once the work signals can tell (bounded), acting on nothing: for ``status``."""
        async with self._signals_running():
            give_up = self.clock() + self.settle_limit()
            while True:
                decision, _ = await self.assess()
                if not decision.provisional or decision.next_check_at > give_up:
                    return decision
                if await self._sleep_until(decision.next_check_at):
                    return decision

    def settle_limit(self) -> timedelta:
        """How long ``--once`` and ``status`` wait at most for the work signals' first window."""
        return self.settings.effective_process_window + 2 * self.settings.effective_process_sample_interval

    @contextlib.asynccontextmanager
    async def _signals_running(self) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(s.run(), name=f"signal {s.name}") for s in self.signals]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, once: bool) -> WatchResult:
        give_up = self.clock() + self.settle_limit()
        while True:
            decision, stop = await self.check()
            if stop is not None and stop.outcome is StopOutcome.STOPPED:
                return WatchResult(decision, stop)
            settling = decision.provisional and decision.next_check_at <= give_up
            if once and not settling:
                return WatchResult(decision, stop)
            wake_at = decision.next_check_at
            if stop is not None:
                # Stop skipped (dry run / none), failed, or still stopping: look again later, not in a loop.
                wake_at = self.clock() + self.settings.busy_recheck
            if await self._sleep_until(wake_at):
                self.journal.record(self.target, "agent", "exiting on request", at=self.clock())
                return WatchResult(decision, stop)

    async def _pause(self, delay_s: float) -> None:
        if self._sleep is not None:
            await self._sleep(delay_s)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._alarm.wait(), timeout=delay_s)

    async def _sleep_until(self, wake_at: datetime) -> bool:
        """Sleep until ``wake_at`` or :meth:`wake` (rewriting the heartbeat on the way); True if asked to exit."""
        while True:
            now = self.clock()
            target = wake_at
            if self.settings.heartbeat is not None and self._heartbeat_at is not None:
                target = min(target, self._heartbeat_at + self.settings.heartbeat_interval)
            await self._pause(max((target - now).total_seconds(), _MIN_SLEEP_S))
            if self._exit_requested:
                return True
            if self._alarm.is_set():
                self._alarm.clear()
                return False
            if self.clock() >= wake_at:
                return False
            if self._last is not None:
                self._write_heartbeat(self._last, self.clock())

    def _write_heartbeat(self, decision: Decision, now: datetime) -> None:
        path = self.settings.heartbeat
        if path is None:
            return
        self._heartbeat_at = now
        interval = self.settings.heartbeat_interval
        try:
            write_heartbeat(path, self.target, decision, now, interval=interval)
        except OSError as exc:
            logger.warning("cannot write the heartbeat %s: %s", path, exc.strerror)
        # On SageMaker the log is shipped to CloudWatch: the fleet check reads Code Editor agents there
        # (no Jupyter API to read the file through), and notebook instances' (the file is outside the root).
        logged = self._heartbeat_logged_at
        if self.settings.platform in ("sagemaker", "sagemaker-notebook-instance") and (
            logged is None or now - logged >= interval
        ):
            self._heartbeat_logged_at = now
            _heartbeat_logger.info("%s", heartbeat_log_line(self.target, decision, now, interval=interval))


@contextlib.contextmanager
def exit_on_signals(request_exit: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and the first SIGINT call ``request_exit`` (an agent's, or the hub fleet's: the current
    pass finishes); a second SIGINT forces the exit."""
    loop = asyncio.get_running_loop()
    hits = {"int": 0}

    def on_term() -> None:
        logger.info("SIGTERM: finishing the current pass")
        request_exit()

    def on_int() -> None:
        hits["int"] += 1
        if hits["int"] > 1:
            raise KeyboardInterrupt
        logger.info("interrupted: finishing the current pass (Ctrl-C again to force)")
        request_exit()

    installed = []
    for signum, handler in ((signal.SIGTERM, on_term), (signal.SIGINT, on_int)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handler)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
