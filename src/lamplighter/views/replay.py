"""Policy replay: a fleet's activity trace run through three stopping policies with the same idle timeout.

The trace format (JSON Lines, version 1; times are seconds from the trace's ``start``):

- line 1, the header: ``{"format": "lamplighter-trace", "version": 1, "start": ISO-8601, "duration_s": N,
  "generator": {...}}`` (``generator`` is free-form: the seed and assumptions of a synthetic trace);
- then one line per app: ``{"app": NAME, "instance_type": TYPE?, "sessions": [[start, stop|null], ...],
  "interactions": [t, ...], "work": [[start, end, KIND], ...], "tabs": [[start, end], ...]}``.

``sessions`` are when the user starts the app and when they stop it themselves (``null``: they forget
to). ``interactions`` are moments somebody did something (ran a cell, typed, saved). ``work`` is
something computing with nobody at the keyboard: ``cell`` (a cell that prints as it runs), ``silent``
(a cell that prints nothing until it ends), ``nohup`` (a background job started from a terminal, no
output) and ``gpu`` (a background job on the GPU). ``tabs`` are browser tabs left open (JupyterLab
polls the server every few seconds and holds a kernel connection).

What each policy sees of that, per the research notes (``research/aws-samples.md``, ``research/peers.md``):

- the server: one notebook kernel from the first interaction or cell after the app starts, busy while
  a ``cell``/``silent`` runs; its ``last_activity`` moves with every interaction and, for a ``cell``,
  all the while it runs (output), for a ``silent`` only at its start and end. One terminal from the
  first ``nohup``/``gpu`` job, its ``last_activity`` the moment that job was typed. The server's own
  ``last_activity`` also moves while a tab is open (its polls).
- ``aws-lcc``: the JupyterLab lifecycle script, cron every 2 min on the clock: a kernel not idle keeps
  the app; else kernels' and terminals' ``last_activity`` older than the timeout stop it; with no
  kernel nor terminal, the state file (first run, or the last activity it recorded).
- ``hub-culler``: jupyterhub-idle-culler, a pass every ``timeout / 2`` from the trace start, on the hub's
  ``last_activity``, which the server reports every 300 s ± 10 % (the value of its own ``last_activity``).
- ``lamplighter``: :func:`lamplighter.policy.decide` itself, with the default settings and the timeout,
  driven by a simulated clock: it looks again at ``Decision.next_check_at`` and stops on a STOP. Its
  process-tree and GPU signals see every work kind while it runs (assumed: the trace's jobs run longer
  than the signals' 30 s window).

After a stop the app is down until the user's next interaction, work start or session (they reopen
it). Figures per policy: idle app-hours past the timeout (up, nothing running, last activity older
than the timeout: 0 for a perfect policy), running jobs killed, stops of apps somebody used within the
timeout, stops, app-hours up.
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from lamplighter.errors import ConfigError
from lamplighter.model import Action, ActivityReading, Clock, KernelInfo, Memory, ServerSnapshot, TerminalInfo
from lamplighter.policy import PolicySettings, decide

__all__ = [
    "FORMAT",
    "POLICIES",
    "App",
    "PolicyResult",
    "Trace",
    "format_table",
    "load_trace",
    "replay",
    "write_trace",
]

FORMAT = "lamplighter-trace"
VERSION = 1
WORK_KINDS = ("cell", "silent", "nohup", "gpu")
_KERNEL_WORK = ("cell", "silent")
_TERMINAL_WORK = ("nohup", "gpu")
AWS_CRON_S = 120.0
HUB_REPORT_S = 300.0
HUB_JITTER = 0.1


@dataclass(frozen=True)
class App:
    """One app of the trace (times in seconds from the trace start)."""

    name: str
    sessions: tuple[tuple[float, float | None], ...]
    interactions: tuple[float, ...]
    work: tuple[tuple[float, float, str], ...]
    tabs: tuple[tuple[float, float], ...] = ()
    instance_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.name,
            "instance_type": self.instance_type,
            "sessions": [list(s) for s in self.sessions],
            "interactions": list(self.interactions),
            "work": [list(w) for w in self.work],
            "tabs": [list(t) for t in self.tabs],
        }


@dataclass(frozen=True)
class Trace:
    start: datetime
    duration_s: float
    apps: tuple[App, ...]
    generator: dict[str, Any] = field(default_factory=dict)


def write_trace(trace: Trace, path: Path) -> None:
    with path.open("w") as out:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "start": trace.start.isoformat(),
            "duration_s": trace.duration_s,
            "generator": trace.generator,
        }
        out.write(json.dumps(header) + "\n")
        for app in trace.apps:
            out.write(json.dumps(app.to_json()) + "\n")


def load_trace(path: Path) -> Trace:
    """Read a trace; anything malformed is a ConfigError naming the line (exit 2)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"trace {path}: cannot read ({exc.strerror})") from None
    if not lines:
        raise ConfigError(f"trace {path}: empty")
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} header")
        start = datetime.fromisoformat(str(header["start"])).astimezone(timezone.utc)
        duration = float(header["duration_s"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"trace {path}: line 1: {exc}") from None
    apps = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            apps.append(_parse_app(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"trace {path}: line {number}: {exc}") from None
    return Trace(start, duration, tuple(apps), dict(header.get("generator") or {}))


def _parse_app(data: Any) -> App:
    if not isinstance(data, dict):
        raise ValueError("an app must be a JSON object")
    work = []
    for start, end, kind in data.get("work", ()):
        if kind not in WORK_KINDS:
            raise ValueError(f"work kind {kind!r} is not one of {', '.join(WORK_KINDS)}")
        if float(end) < float(start):
            raise ValueError("a work interval ends before it starts")
        work.append((float(start), float(end), str(kind)))
    return App(
        name=str(data["app"]),
        sessions=tuple(
            (float(s), None if e is None else float(e))
            for s, e in sorted(data["sessions"], key=lambda x: x[0])
        ),
        interactions=tuple(sorted(float(t) for t in data.get("interactions", ()))),
        work=tuple(sorted(work)),
        tabs=tuple(sorted((float(s), float(e)) for s, e in data.get("tabs", ()))),
        instance_type=str(data["instance_type"]) if data.get("instance_type") else None,
    )


# -- what the server shows at a moment -------------------------------------------------------------


class _Server:
    """One up spell of an app: what its kernel, terminal and tabs show at a moment."""

    def __init__(self, app: App, up_since: float, killed: set[int]) -> None:
        self.app = app
        self.up_since = up_since
        self._killed = killed
        self._inter = app.interactions
        # Work begun before this start cannot run in a fresh app; a killed job is gone.
        self.work = [(i, w) for i, w in enumerate(app.work) if w[0] >= up_since and i not in killed]
        self._starts = [w[0] for _, w in self.work]
        i = bisect.bisect_left(self._inter, up_since)
        first = self._inter[i] if i < len(self._inter) else None
        cells = [s for _, (s, _e, k) in self.work if k in _KERNEL_WORK]
        born = [x for x in (first, cells[0] if cells else None) if x is not None]
        self._kernel_born = min(born) if born else None

    def _begun(self, t: float) -> list[tuple[int, tuple[float, float, str]]]:
        """The work of this spell begun by ``t``."""
        return self.work[: bisect.bisect_right(self._starts, t)]

    def last_interaction(self, t: float) -> float | None:
        i = bisect.bisect_right(self._inter, t)
        if i and self._inter[i - 1] >= self.up_since:
            return self._inter[i - 1]
        return None

    def running(self, t: float, kinds: Sequence[str] = WORK_KINDS) -> list[int]:
        return [i for i, (s, e, k) in self._begun(t) if t < e and k in kinds]

    def kernel(self, t: float) -> tuple[bool, float] | None:
        """(busy, last_activity) of the notebook kernel, or None before it exists."""
        born = self._kernel_born
        if born is None or born > t:
            return None
        last = max(born, self.last_interaction(t) or born)
        busy = False
        for _, (s, e, k) in self._begun(t):
            if k not in _KERNEL_WORK:
                continue
            if t < e:
                busy = True
            # A printing cell moves last_activity all along; a silent one at its start and its end.
            last = max(last, min(t, e) if k == "cell" else (e if e <= t else s))
        return busy, last

    def terminal(self, t: float) -> float | None:
        starts = [s for _, (s, _e, k) in self._begun(t) if k in _TERMINAL_WORK]
        return max(starts) if starts else None

    def server_activity(self, t: float) -> float:
        """The server's own last_activity: kernel, terminal, and every poll of an open tab."""
        moments = [self.up_since, self.last_interaction(t) or self.up_since]
        kernel = self.kernel(t)
        if kernel is not None:
            moments.append(kernel[1])
        terminal = self.terminal(t)
        if terminal is not None:
            moments.append(terminal)
        for s, e in self.app.tabs:
            if s <= t and e >= self.up_since:
                moments.append(min(t, e))
        return max(moments)

    def last_work_end(self, t: float, kinds: Sequence[str]) -> float | None:
        ends = [e for _, (_s, e, k) in self._begun(t) if k in kinds and e <= t]
        return max(ends) if ends else None

    def tab_open(self, t: float) -> bool:
        return any(s <= t < e for s, e in self.app.tabs)


# -- the three policies ----------------------------------------------------------------------------


class _Policy(Protocol):
    def start(self, server: _Server) -> None: ...
    def next_check(self, after: float) -> float: ...
    def stops(self, t: float) -> bool: ...


class _AwsLcc:
    """The AWS JupyterLab lifecycle script: cron */2, sessions' kernels idle + last_activity, a state file."""

    def __init__(self, timeout_s: float, seed: int) -> None:
        self.timeout = timeout_s
        self._state: float | None = None
        self._server: _Server | None = None

    def start(self, server: _Server) -> None:
        self._server, self._state = server, None  # the state file does not outlive the app

    def next_check(self, after: float) -> float:
        return (after // AWS_CRON_S + 1) * AWS_CRON_S

    def stops(self, t: float) -> bool:
        server = self._server
        assert server is not None
        kernel = server.kernel(t)
        terminal = server.terminal(t)
        if self._state is None:
            self._state = t  # the first run writes "now"
        idle = True
        if kernel is not None:
            busy, last = kernel
            idle = not busy and t - last > self.timeout
        if idle and terminal is not None:
            idle = t - terminal > self.timeout
        if idle and kernel is None and terminal is None:
            idle = t - self._state > self.timeout
        seen = [x for x in (kernel[1] if kernel else None, terminal) if x is not None]
        if seen:
            self._state = max(seen)
        return idle


class _HubCuller:
    """jupyterhub-idle-culler: every timeout/2, ``now - hub last_activity > timeout``; reports every 300 s ± 10 %."""

    def __init__(self, timeout_s: float, seed: int) -> None:
        self.timeout = timeout_s
        self.every = timeout_s / 2
        self._rng = random.Random(seed)
        self._server: _Server | None = None
        self._reports: list[float] = []
        self._hub_last = 0.0

    def start(self, server: _Server) -> None:
        self._server = server
        self._hub_last = server.up_since  # the hub sets last_activity at spawn
        self._reports = [server.up_since]

    def next_check(self, after: float) -> float:
        return (after // self.every + 1) * self.every

    def stops(self, t: float) -> bool:
        server = self._server
        assert server is not None
        while True:
            due = self._reports[-1] + HUB_REPORT_S * self._rng.uniform(1 - HUB_JITTER, 1 + HUB_JITTER)
            if due > t:
                break
            self._reports.append(due)
            self._hub_last = max(self._hub_last, server.server_activity(due))
        return t - self._hub_last > self.timeout


class _Lamplighter:
    """:func:`lamplighter.policy.decide` on snapshots of the simulated server, at its own next checks."""

    def __init__(self, timeout_s: float, seed: int, settings: PolicySettings | None = None) -> None:
        from lamplighter.settings import load_settings

        self.timeout = timeout_s
        self.settings = settings or load_settings(
            {"idle_timeout": f"{timeout_s:g}s"}, env={}, config_path=None
        )
        self._epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._server: _Server | None = None
        self._memory = Memory()
        self._next = 0.0
        self.decisions = 0

    def _at(self, t: float) -> datetime:
        return self._epoch + timedelta(seconds=t)

    def start(self, server: _Server) -> None:
        self._server, self._memory, self._next = server, Memory(), server.up_since

    def next_check(self, after: float) -> float:
        return max(self._next, after + 1e-6)

    def stops(self, t: float) -> bool:
        server = self._server
        assert server is not None
        now = self._at(t)
        decision = decide(self._snapshot(server, t), self._memory, self.settings, now)
        self.decisions += 1
        self._memory = decision.memory
        self._next = (decision.next_check_at - self._epoch).total_seconds()
        return decision.action is Action.STOP

    def _snapshot(self, server: _Server, t: float) -> ServerSnapshot:
        kernels: tuple[KernelInfo, ...] = ()
        kernel = server.kernel(t)
        if kernel is not None:
            busy, last = kernel
            kernels = (
                KernelInfo(
                    id=f"k{server.up_since:.0f}",
                    name="python3",
                    execution_state="busy" if busy else "idle",
                    last_activity=self._at(last),
                    connections=1 if server.tab_open(t) else 0,
                ),
            )
        terminal = server.terminal(t)
        terminals = (TerminalInfo("1", self._at(terminal)),) if terminal is not None else ()
        readings = tuple(
            self._reading(server, t, name, kinds)
            for name, kinds in (("processes", WORK_KINDS), ("gpu", ("gpu",)))
        )
        return ServerSnapshot(
            target=server.app.name,
            started=self._at(server.up_since),
            last_activity=self._at(server.server_activity(t)),
            connections=1 if server.tab_open(t) else 0,
            kernels=kernels,
            terminals=terminals,
            readings=readings,
        )

    def _reading(self, server: _Server, t: float, name: str, kinds: Sequence[str]) -> ActivityReading:
        if server.running(t, kinds):
            return ActivityReading(name, Clock.WORK, self._at(t), f"{name}: work running", active_now=True)
        last = server.last_work_end(t, kinds)
        return ActivityReading(
            name, Clock.WORK, self._at(last) if last is not None else None, f"{name}: idle"
        )


POLICIES: dict[str, Callable[[float, int], _Policy]] = {
    "aws-lcc": _AwsLcc,
    "hub-culler": _HubCuller,
    "lamplighter": _Lamplighter,
}


# -- the replay ------------------------------------------------------------------------------------


@dataclass
class PolicyResult:
    """One policy's figures over the whole trace."""

    policy: str
    idle_hours_past_timeout: float = 0.0
    jobs_killed: int = 0
    stops_in_use: int = 0
    stops: int = 0
    up_hours: float = 0.0
    checks: int = 0
    up_cost: float = 0.0  # app-hours up × the app's price per hour (apps without a price: 0)
    idle_cost: float = 0.0  # idle app-hours past the timeout × price

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _idle_past(app: App, a: float, b: float, killed: set[int], timeout: float) -> float:
    """Seconds in [a, b) with nothing running and the last activity (or the start) over ``timeout`` ago."""
    marks: list[tuple[float, float]] = [(t, t) for t in app.interactions if a <= t < b]
    marks += [(s, min(e, b)) for i, (s, e, _k) in enumerate(app.work) if a <= s < b and i not in killed]
    marks.sort()
    cursor, idle = a, 0.0
    for s, e in marks:
        idle += max(0.0, s - (cursor + timeout))
        cursor = max(cursor, e)
    return idle + max(0.0, b - (cursor + timeout))


def _replay_app(app: App, policy: _Policy, timeout: float, end: float, result: PolicyResult) -> None:
    starts = sorted({s for s, _ in app.sessions} | set(app.interactions) | {s for s, _e, _k in app.work})
    user_stops = sorted(e for _, e in app.sessions if e is not None)
    killed: set[int] = set()

    def next_after(times: list[float], t: float) -> float | None:
        i = bisect.bisect_right(times, t)
        return times[i] if i < len(times) else None

    t = app.sessions[0][0] if app.sessions else end
    while t < end:
        up_since = t
        server = _Server(app, up_since, killed)
        policy.start(server)
        stop_by_user = next_after(user_stops, t)
        down_at = end
        while True:
            check = policy.next_check(t)
            if stop_by_user is not None and stop_by_user <= check and stop_by_user < end:
                down_at = stop_by_user
                break
            if check >= end:
                break
            t = check
            result.checks += 1
            if policy.stops(t):
                result.stops += 1
                running = server.running(t)
                result.jobs_killed += len(running)
                killed.update(running)
                last = server.last_interaction(t)
                # A millisecond of slack: a stop exactly at the deadline is not "in use" by float rounding.
                if last is not None and t - last < timeout - 1e-3:
                    result.stops_in_use += 1
                down_at = t
                break
        result.up_hours += (down_at - up_since) / 3600
        result.idle_hours_past_timeout += _idle_past(app, up_since, down_at, killed, timeout) / 3600
        restart = next_after(starts, down_at)
        if restart is None:
            break
        t = restart


def _replay_one(args: tuple[str, App, float, float, int, float]) -> PolicyResult:
    name, app, timeout_s, duration_s, seed, price = args
    result = PolicyResult(name)
    _replay_app(app, POLICIES[name](timeout_s, seed), timeout_s, duration_s, result)
    result.up_cost = result.up_hours * price
    result.idle_cost = result.idle_hours_past_timeout * price
    return result


def replay(
    trace: Trace,
    timeout: timedelta,
    *,
    policies: Iterable[str] = POLICIES,
    seed: int = 0,
    workers: int = 1,
    per_hour: Mapping[str, float] | None = None,
) -> list[PolicyResult]:
    """Every app of ``trace`` through each policy with the same ``timeout``; ``workers`` > 1 uses processes.

    ``per_hour`` (instance type → price) turns each app's hours into money.
    """
    prices = per_hour or {}
    names = list(policies)
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ConfigError(f"policy {unknown[0]!r}: expected one of {', '.join(POLICIES)}")
    jobs = [
        (
            name,
            app,
            timeout.total_seconds(),
            trace.duration_s,
            seed * 1_000_003 + number,
            prices.get(app.instance_type or "", 0.0),
        )
        for name in names
        for number, app in enumerate(trace.apps)
    ]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_replay_one, jobs, chunksize=4))
    else:
        parts = [_replay_one(job) for job in jobs]
    results = []
    for name in names:
        total = PolicyResult(name)
        for part in (p for p in parts if p.policy == name):
            total.idle_hours_past_timeout += part.idle_hours_past_timeout
            total.jobs_killed += part.jobs_killed
            total.stops_in_use += part.stops_in_use
            total.stops += part.stops
            total.up_hours += part.up_hours
            total.checks += part.checks
            total.up_cost += part.up_cost
            total.idle_cost += part.idle_cost
        results.append(total)
    return results


def format_table(results: Sequence[PolicyResult], *, currency: str | None = None) -> str:
    """The README's cost table (Markdown); money columns when ``currency`` is given."""
    anchor = max((r.idle_hours_past_timeout for r in results if r.policy != "lamplighter"), default=0.0)
    money = f" | cost up ({currency}) | cost idle past the timeout ({currency})" if currency else ""
    lines = [
        "| policy | idle app-hours past the timeout | running jobs killed | stops of apps in use | stops "
        f"| app-hours up{money} |",
        "|---|---|---|---|---|---|" + ("---|---|" if currency else ""),
    ]
    for r in results:
        share = ""
        if anchor and r.policy == "lamplighter":
            share = f" ({100 * r.idle_hours_past_timeout / anchor:.2f} % of the worst)"
        cash = f" | {r.up_cost:,.0f} | {r.idle_cost:,.0f}" if currency else ""
        lines.append(
            f"| {r.policy} | {r.idle_hours_past_timeout:.1f}{share} | {r.jobs_killed} | {r.stops_in_use} "
            f"| {r.stops} | {r.up_hours:.1f}{cash} |"
        )
    return "\n".join(lines)
