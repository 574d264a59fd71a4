"""The in-server extension's side of the reports: what it saw at each check, POSTed to ``lamplighter hub``.

Inside a hub user's server with ``report_to`` set, the extension's agent keeps checking in process
(no request to itself) and reports each check's snapshot, the readings only it can take (process
tree, GPU, keep-alive file, snooze) and its verdict to ``{report_to}api/report`` with the server's own
token (``JUPYTERHUB_API_TOKEN``). It reports after every check, and when ``report_interval`` passed
without one it checks again first: a report is never older than one interval. It never stops its
server itself (:class:`LeftToTheService`): the service is the one stopper, with its own policy.
A report that cannot be delivered is logged once per outage; the service then probes the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from lamplighter.errors import RemoteError
from lamplighter.hub.reports import readings_to_list, snapshot_to_dict
from lamplighter.model import ActivityReading, Decision, ServerSnapshot, StopOutcome, StopResult
from lamplighter.platforms.base import Probe
from lamplighter.platforms.jupyterhub import HubServer, server_from_env_or_url
from lamplighter.remote.connection import Connection
from lamplighter.settings import Settings
from lamplighter.signals import Signal
from lamplighter.stoppers import NoStop

__all__ = ["LeftToTheService", "Reporter", "reporter_for"]

logger = logging.getLogger(__name__)


class LeftToTheService(NoStop):
    """The stop of a reporting server: the hub service's to make (a NoStop: nothing here acts)."""

    def __init__(self, report_to: str) -> None:
        self._report_to = report_to

    @property
    def description(self) -> str:
        return f"the hub service, reported to {Connection(self._report_to).display_url}"

    async def stop(self, decision: Decision) -> StopResult:
        return StopResult(StopOutcome.SKIPPED, "reported: the hub service stops this server")


class _SeenProbe:
    def __init__(self, real: Probe, reporter: Reporter) -> None:
        self._real = real
        self._reporter = reporter

    @property
    def target(self) -> str:
        return self._real.target

    async def snapshot(self) -> ServerSnapshot:
        snapshot = await self._real.snapshot()
        self._reporter.snapshot = snapshot
        self._reporter.readings.clear()
        return snapshot

    async def cull_kernel(self, kernel_id: str) -> None:
        await self._real.cull_kernel(kernel_id)

    async def cull_terminal(self, name: str) -> None:
        await self._real.cull_terminal(name)


class _SeenSignal:
    def __init__(self, real: Signal, reporter: Reporter) -> None:
        self._real = real
        self._reporter = reporter
        self.name = real.name

    async def run(self) -> None:
        await self._real.run()

    async def refresh(self) -> None:
        await self._real.refresh()

    def reading(self, now: datetime) -> ActivityReading:
        reading = self._real.reading(now)
        self._reporter.readings[self.name] = reading
        return reading

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Reporter:
    """Keeps what the agent saw at its latest check and delivers it to the service."""

    def __init__(
        self,
        report_to: str,
        token: str | None,
        server: HubServer,
        *,
        interval_s: float,
        verify_tls: bool = True,
        timeout_s: float = 10.0,
    ) -> None:
        self._url = report_to if report_to.endswith("/") else report_to + "/"
        self._token = token
        self._server = server
        self.interval_s = interval_s
        self._verify_tls = verify_tls
        self._timeout_s = timeout_s
        self.stopper = LeftToTheService(self._url)
        self.snapshot: ServerSnapshot | None = None
        self.readings: dict[str, ActivityReading] = {}
        self._decision: Decision | None = None
        self._new = asyncio.Event()
        self.sent = 0
        self._failing = False

    def capture(self, probe: Probe, signals: Sequence[Signal]) -> tuple[Probe, tuple[Signal, ...]]:
        """Wrap what the agent is built with, so each check's snapshot and readings are kept."""
        return _SeenProbe(probe, self), tuple(_SeenSignal(s, self) for s in signals)

    def decided(self, decision: Decision) -> None:
        self._decision = decision
        self._new.set()

    def body(self) -> dict[str, Any] | None:
        if self.snapshot is None or self._decision is None:
            return None
        snapshot = snapshot_to_dict(self.snapshot)
        snapshot["readings"] += readings_to_list(self.readings.values())
        return {
            "user": self._server.user,
            "server_name": self._server.name,
            "interval_s": self.interval_s,
            "decision": self._decision.to_dict(),
            "snapshot": snapshot,
        }

    async def run(self, check_now: Callable[[], None]) -> None:
        """Report after every check; ask for a check when an interval passed without one."""
        async with Connection(
            self._url, token=self._token, verify_tls=self._verify_tls, timeout_s=self._timeout_s
        ) as conn:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._new.wait(), timeout=self.interval_s)
                if not self._new.is_set():
                    check_now()
                    # The check that follows reports; if it is slow, the old one is still the newest.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._new.wait(), timeout=min(self.interval_s, 5.0))
                self._new.clear()
                await self._send(conn)

    async def _send(self, conn: Connection) -> None:
        body = self.body()
        if body is None:
            return
        try:
            await conn.request("POST", "api/report", json_body=body)
        except RemoteError as exc:
            if not self._failing:
                logger.warning("lamplighter: cannot report to the hub service (it probes instead): %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("lamplighter: reporting to the hub service again")
        self._failing = False
        self.sent += 1


def reporter_for(settings: Settings, env: Mapping[str, str]) -> Reporter | None:
    """A reporter inside a hub user's server with ``report_to`` set; else ``None`` (today's behaviour)."""
    if not settings.report_to:
        return None
    server = server_from_env_or_url(env, None)
    if server is None or not env.get("JUPYTERHUB_API_TOKEN"):
        logger.warning("lamplighter: report_to is set but this is not a hub user's server; not reporting")
        return None
    return Reporter(
        settings.report_to,
        env["JUPYTERHUB_API_TOKEN"],
        server,
        interval_s=settings.report_interval.total_seconds(),
        verify_tls=settings.verify_tls,
    )
