"""Prometheus metrics: the live verdict of each watched target, and the journal's counts, on one registry.

Two sources, so no agent internals change. The live part comes from three thin wrappers that
:meth:`Metrics.instrument` puts around what an agent is built with: the probe (probes, failures by
error class, busy kernels), the signals (busy process tree, busy GPU) and the ``on_decision``
callback (verdict, deadline, idle since). The counted part (stops and culls by outcome, the decision
lag, app seconds up and saved) is read from the journal at scrape time through
:func:`lamplighter.views.report.summarise`, so it survives restarts and agrees with ``lamplighter report``.

Units follow Prometheus' conventions: seconds, ``_total`` for counters. A hub service (or any fleet
runner) calls :meth:`Metrics.instrument` once per server it watches; that is the whole hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from lamplighter.errors import RemoteError
from lamplighter.journal import Journal
from lamplighter.model import Action, Clock, Decision, ServerSnapshot
from lamplighter.platforms.base import Probe
from lamplighter.signals import Signal
from lamplighter.views.report import stop_reason, summarise

__all__ = ["CONTENT_TYPE", "LAG_BUCKETS_S", "Metrics", "MetricsServer", "serve_metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Decision lag past the deadline: lamplighter aims under a second; the peers' anchors are 60-300 s.
LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_VERDICTS = tuple(a.value for a in Action)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _Live:
    """What the metrics know of one target now."""

    probe_kind: str
    decision: Decision | None = None
    busy_kernels: int = 0
    work: dict[str, bool] = field(default_factory=dict)  # work signal name → busy now


class _MeteredProbe:
    """A probe that counts its probes and failures and remembers its busy kernels."""

    def __init__(self, real: Probe, metrics: Metrics, live: _Live) -> None:
        self._real = real
        self._metrics = metrics
        self._live = live

    @property
    def target(self) -> str:
        return self._real.target

    async def snapshot(self) -> ServerSnapshot:
        labels = (self.target, self._live.probe_kind)
        self._metrics.probes.labels(*labels).inc()
        try:
            snap = await self._real.snapshot()
        except RemoteError as exc:
            self._metrics.probe_failures.labels(*labels, type(exc).__name__).inc()
            raise
        self._live.busy_kernels = sum(1 for k in snap.kernels if k.execution_state == "busy")
        return snap

    async def cull_kernel(self, kernel_id: str) -> None:
        await self._real.cull_kernel(kernel_id)

    async def cull_terminal(self, name: str) -> None:
        await self._real.cull_terminal(name)


class _MeteredSignal:
    """A signal whose work readings say whether its kind of work (processes, GPU) runs now."""

    def __init__(self, real: Signal, live: _Live) -> None:
        self._real = real
        self._live = live
        self.name = real.name

    async def run(self) -> None:
        await self._real.run()

    async def refresh(self) -> None:
        await self._real.refresh()

    def reading(self, now: datetime) -> Any:
        reading = self._real.reading(now)
        if reading.clock is Clock.WORK:
            self._live.work[self.name] = reading.active_now
        return reading

    def __getattr__(self, name: str) -> Any:  # anything else a caller reads of the real signal
        return getattr(self._real, name)


class Metrics(Collector):
    """One registry for every target this process watches; :meth:`render` is the scrape answer.

    The journal's figures cover the instrumented targets, or every target of the journal while none is.
    """

    def __init__(self, journal: Journal | None = None, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._journal = journal
        self._clock = clock
        self._live: dict[str, _Live] = {}
        self.probes = Counter(
            "lamplighter_probes",
            "Probes taken, by target and probe kind.",
            ["target", "kind"],
            registry=self.registry,
        )
        self.probe_failures = Counter(
            "lamplighter_probe_failures",
            "Probes that failed, by target, probe kind and error class.",
            ["target", "kind", "error"],
            registry=self.registry,
        )
        self.registry.register(self)

    def instrument(
        self, probe: Probe, signals: Sequence[Signal] = (), *, kind: str | None = None
    ) -> tuple[Probe, tuple[Signal, ...], Callable[[Decision], None]]:
        """Wrap what an agent for one target is built with; pass the three results to ``Agent``.

        The hook for a fleet (the hub service): call once per server, build its Agent with these.
        """
        live = _Live(probe_kind=kind or type(probe).__name__)
        self._live[probe.target] = live

        def on_decision(decision: Decision) -> None:
            live.decision = decision

        return _MeteredProbe(probe, self, live), tuple(_MeteredSignal(s, live) for s in signals), on_decision

    def work_now(self, target: str) -> float:
        """Busy kernels plus busy work signals at the target's last check (the status page's sparkline)."""
        live = self._live.get(target)
        return float(live.busy_kernels + sum(live.work.values())) if live else 0.0

    def forget(self, target: str) -> None:
        """Stop reporting a target's live figures (its server is gone from the fleet)."""
        self._live.pop(target, None)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the collector ---------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        yield from self._live_families(now)
        if self._journal is not None:
            yield from self._journal_families(self._journal, now)

    def _live_families(self, now: datetime) -> Iterable[Metric]:
        verdict = GaugeMetricFamily(
            "lamplighter_verdict",
            "1 for the target's current verdict (keep, stop, skip), else 0.",
            labels=["target", "verdict"],
        )
        until = GaugeMetricFamily(
            "lamplighter_seconds_until_stop",
            "Seconds until the planned stop (negative: past it); absent while in use.",
            labels=["target"],
        )
        idle = GaugeMetricFamily(
            "lamplighter_idle_seconds",
            "Seconds since the target went idle; 0 while in use.",
            labels=["target"],
        )
        kernels = GaugeMetricFamily(
            "lamplighter_busy_kernels", "Kernels busy at the last probe.", labels=["target"]
        )
        work = GaugeMetricFamily(
            "lamplighter_work_busy",
            "1 while a work signal (processes, gpu) sees work running, else 0.",
            labels=["target", "signal"],
        )
        for target, live in sorted(self._live.items()):
            decision = live.decision
            if decision is None:
                continue
            for name in _VERDICTS:
                verdict.add_metric([target, name], 1.0 if decision.action.value == name else 0.0)
            if decision.stop_at is not None:
                until.add_metric([target], (decision.stop_at - now).total_seconds())
            idle_s = (now - decision.idle_since).total_seconds() if decision.idle_since is not None else 0.0
            idle.add_metric([target], max(0.0, idle_s))
            kernels.add_metric([target], float(live.busy_kernels))
            for signal, busy in sorted(live.work.items()):
                work.add_metric([target, signal], 1.0 if busy else 0.0)
        yield from (verdict, until, idle, kernels, work)

    def _journal_families(self, journal: Journal, now: datetime) -> Iterable[Metric]:
        # Only the targets this process watches: a shared journal also holds other agents' history.
        events = [e for target in sorted(self._live) for e in journal.events(target=target, limit=10_000_000)]
        if not self._live:
            events = journal.events(limit=10_000_000)
        reports = summarise(events, start=None, end=now)
        stops = CounterMetricFamily(
            "lamplighter_stops",
            "Stops attempted, by target, outcome and reason.",
            labels=["target", "outcome", "reason"],
        )
        culls = CounterMetricFamily(
            "lamplighter_culls",
            "Kernels and terminals shut down, by target, kind and outcome.",
            labels=["target", "kind", "outcome"],
        )
        up = CounterMetricFamily(
            "lamplighter_app_up_seconds", "Seconds the app was kept up while watched.", labels=["target"]
        )
        saved = CounterMetricFamily(
            "lamplighter_app_saved_seconds",
            "Seconds of app time saved: from each stop to the next start, capped at 12 h.",
            labels=["target"],
        )
        lag = HistogramMetricFamily(
            "lamplighter_decision_lag_seconds",
            "How long after its deadline a stop was decided.",
            labels=["target"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        cull_counts: dict[tuple[str, str, str], int] = {}
        for event in events:
            if event.kind != "action":
                continue
            if "cull" in event.detail:
                key = (event.target, str(event.detail["cull"]), event.verdict or "unknown")
                cull_counts[key] = cull_counts.get(key, 0) + 1
            elif event.summary.startswith("stop "):
                key = (event.target, event.verdict or "unknown", stop_reason(event))
                counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            stops.add_metric(list(key), float(count))
        for key, count in sorted(cull_counts.items()):
            culls.add_metric(list(key), float(count))
        for report in reports:
            up.add_metric([report.target], report.up_s)
            saved.add_metric([report.target], report.saved_s)
            if report.decision_lags_s:
                buckets = [
                    (str(b), float(sum(1 for x in report.decision_lags_s if x <= b))) for b in LAG_BUCKETS_S
                ]
                buckets.append(("+Inf", float(len(report.decision_lags_s))))
                lag.add_metric([report.target], buckets, sum_value=sum(report.decision_lags_s))
        yield from (stops, culls, up, saved, lag)


# -- the HTTP endpoint of ``watch --metrics-port`` -----------------------------------------------


@dataclass(frozen=True)
class MetricsServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"


@contextlib.asynccontextmanager
async def serve_metrics(metrics: Metrics, host: str, port: int) -> AsyncIterator[MetricsServer]:
    """Answer ``GET /metrics`` on ``host:port`` (0: a free port) in this event loop, while the block runs.

    In the agent's own loop, not a thread: the collector reads the journal's connection, which
    belongs to this thread. The bound port is logged (tests and people read it there).
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            line = request.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                status, body, kind = b"200 OK", metrics.render(), CONTENT_TYPE
            else:
                status, body, kind = b"404 Not Found", b"only GET /metrics here\n", "text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + kind.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    bound = MetricsServer(host, int(server.sockets[0].getsockname()[1]))
    logger.info("metrics at %s", bound.url)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
