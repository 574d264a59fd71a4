"""In-server mode: a Jupyter server extension that runs the same agent and policy inside the server.

Enable with ``jupyter server extension enable lamplighter`` and configure with traitlets, using the
same names as the command line: ``c.Lamplighter.idle_timeout = "1h"``, ``c.Lamplighter.kernel_timeout =
600``. It reads the server's own kernel, terminal and session managers (no HTTP, no websocket: it
creates no activity), culls idle kernels and terminals, stops the server through the configured action,
and serves ``GET {base_url}lamplighter/api/status`` with the verdict, the settings in force and how
many checks have run; ``{base_url}lamplighter/`` (the status page) and ``{base_url}lamplighter/metrics``
come from :mod:`lamplighter.views`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import ensure_async, url_path_join
from tornado import ioloop, web
from traitlets import Any as AnyTrait
from traitlets.config import Configurable

from lamplighter.agent import Agent
from lamplighter.errors import LamplighterError
from lamplighter.hub.reporter import reporter_for
from lamplighter.journal import Journal
from lamplighter.model import (
    ActivityReading,
    Clock,
    Decision,
    ServerSnapshot,
    StopOutcome,
    StopResult,
    format_time,
    parse_timestamp,
)
from lamplighter.platforms.base import Stopper
from lamplighter.platforms.jupyter import parse_snapshot
from lamplighter.platforms.jupyterhub import HubStop
from lamplighter.redaction import guard_handlers, redact
from lamplighter.settings import Settings, load_settings, option_specs
from lamplighter.signals.keepalive import write_snooze
from lamplighter.stoppers import DryRun, NoStop
from lamplighter.views.metrics import Metrics
from lamplighter.views.page import MetricsHandler, PageHandler, SnoozeHandler, Sparkline
from lamplighter.wiring import build_signals, build_stopper, companion_running, row_for

__all__ = ["InServerAgent", "Lamplighter"]

logger = logging.getLogger(__name__)

_KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"

# The server is the target itself: how to reach it is not configurable here.
# Its metrics are served by the server itself, at {base_url}lamplighter/metrics: no port of their own.
_NOT_IN_SERVER = frozenset(
    {"url", "token", "token_file", "cookies", "verify_tls", "request_timeout", "metrics_port", "metrics_host"}
)


def _traits() -> dict[str, Any]:
    return {
        spec.name: AnyTrait(None, allow_none=True, help=spec.metadata["help"]).tag(config=True)
        for spec in option_specs()
        if spec.name not in _NOT_IN_SERVER
    }


Lamplighter: type[Configurable] = type(
    "Lamplighter",
    (Configurable,),
    {
        "__doc__": "lamplighter settings for the in-server mode (every lamplighter setting by name).",
        **_traits(),
    },
)


class InProcessServer:
    """Probe of the server we run in: its managers' models, parsed by the same code as the REST probe."""

    def __init__(self, web_app: Any, target: str) -> None:
        self._web_app = web_app
        self._target = target

    @property
    def target(self) -> str:
        return self._target

    async def snapshot(self) -> ServerSnapshot:
        settings = self._web_app.settings
        kernel_manager = settings["kernel_manager"]
        kernels = kernel_manager.list_kernels()
        terminals = settings["terminal_manager"].list() if settings.get("terminal_manager") else []
        sessions = (
            await settings["session_manager"].list_sessions() if settings.get("session_manager") else []
        )
        status = {
            "started": settings["started"],
            "last_activity": self._web_app.last_activity(),
            "connections": sum(k.get("connections", 0) for k in kernels),
        }
        snapshot = parse_snapshot(self._target, status, kernels, terminals, sessions)
        return replace(snapshot, readings=self._departed(kernel_manager.last_kernel_activity, settings))

    @staticmethod
    def _departed(kernel_activity: Any, settings: Any) -> tuple[ActivityReading, ...]:
        """What the managers remember after a kernel or terminal is gone (a probe only sees the living).

        Not the server's own ``last_activity``: that counts every API call, open browser tabs' polls
        included, and would keep every app with a forgotten tab alive.
        """
        readings = []
        for source, value, what in (
            ("kernel manager", kernel_activity, "kernel activity"),
            ("terminal manager", settings.get("terminal_last_activity"), "terminal activity"),
        ):
            if isinstance(value, datetime):
                at = parse_timestamp(value)
                readings.append(
                    ActivityReading(
                        source, Clock.INTERACTION, at, f"latest {what} on this server at {format_time(at)}"
                    )
                )
        return tuple(readings)

    async def cull_kernel(self, kernel_id: str) -> None:
        manager = self._web_app.settings["kernel_manager"]
        if kernel_id in manager:
            before = manager.last_kernel_activity
            await ensure_async(manager.shutdown_kernel(kernel_id))
            # The manager counts a shutdown as kernel activity; our own cull is nobody's activity.
            manager.last_kernel_activity = before

    async def cull_terminal(self, name: str) -> None:
        manager = self._web_app.settings.get("terminal_manager")
        if manager is not None and name in manager.terminals:
            await manager.terminate(name, force=True)


class InProcessShutdown:
    """Stops the server we run in, the way ``POST /api/shutdown`` does."""

    def __init__(self, serverapp: Any) -> None:
        self._serverapp = serverapp

    @property
    def description(self) -> str:
        return "in-server shutdown"

    async def stop(self, decision: Decision) -> StopResult:
        # The server's own log is where its admin looks first for why it went away.
        await self._serverapp._cleanup()
        ioloop.IOLoop.current().stop()
        return StopResult(StopOutcome.STOPPED, "the server is shutting down")


class LoggedStop:
    """Says in the server's own log, before any stopper acts, that lamplighter stops the server and why.

    ``before`` is called first too: a stop through the hub ends this process while the hub answers
    the DELETE, so its outcome is never journaled; the request is, before it is sent.
    """

    def __init__(self, real: Stopper, log: Any, *, before: Callable[[Decision], None] | None = None) -> None:
        self._real = real
        self._log = log
        self._before = before

    @property
    def description(self) -> str:
        return self._real.description

    async def stop(self, decision: Decision) -> StopResult:
        self._log.warning(
            "lamplighter: stopping the server: %s (%s)", redact(decision.reason), self._real.description
        )
        if self._before is not None:
            self._before(decision)
        result = await self._real.stop(decision)
        self._log.info("lamplighter: %s: %s", result.outcome.value, redact(result.detail))
        return result


class InServerAgent:
    """The agent task and what the status endpoint shows."""

    def __init__(self, serverapp: Any, settings: Settings) -> None:
        self.settings = settings
        target = serverapp.connection_url
        self.probe = InProcessServer(serverapp.web_app, target)
        # The wiring's stopper, except that a server shutdown is done in process (no HTTP to ourselves).
        stopper = build_stopper(settings, None, target, in_process=InProcessShutdown(serverapp))
        # In a hub user's server with report_to: reports to the hub service, which stops it.
        self.reporter = reporter_for(settings, os.environ)
        if self.reporter is not None:
            stopper = self.reporter.stopper
        self.last: Decision | None = None
        self.journal = Journal(settings.journal)
        before = self._journal_request if isinstance(stopper, HubStop) else None
        # A dry run or --action none stops nothing: the server log is for real stops.
        self.stopper = (
            stopper
            if isinstance(stopper, DryRun | NoStop)
            else LoggedStop(stopper, serverapp.log, before=before)
        )
        # The views (lamplighter.views): metrics and the status page read what the agent sees.
        self.metrics = Metrics(self.journal)
        self.sparkline = Sparkline()
        # The server is this process: its tree is ours to read, whatever port it listens on.
        probe, signals, self._metered = self.metrics.instrument(
            self.probe, build_signals(settings, server_pid=os.getpid()), kind="in-process"
        )
        if self.reporter is not None:
            probe, signals = self.reporter.capture(probe, signals)
        self.agent = Agent(
            settings, probe, self.stopper, self.journal, signals=signals, on_decision=self._seen
        )
        self.task: asyncio.Task[Any] | None = None
        # Studio Classic: the KernelGateway apps' culler runs beside the agent (lamplighter.wiring).
        self._serverapp = serverapp
        self.culler: Any = None
        self._listen_for_kernels(serverapp)

    def _listen_for_kernels(self, serverapp: Any) -> None:
        """A kernel started, restarted or shut down re-plans at once (a new kernel has its cull deadline)."""
        events = getattr(serverapp, "event_logger", None)
        if events is None or not hasattr(events, "add_listener"):
            return  # jupyter_server < 2.4: the probe interval bounds the delay instead

        async def on_kernel_action(logger: Any, schema_id: str, data: Any) -> None:
            self.agent.wake()
            if self.culler is not None:
                self.culler.wake()

        events.add_listener(schema_id=_KERNEL_ACTIONS, listener=on_kernel_action)

    def _journal_request(self, decision: Decision) -> None:
        self.journal.record_stop(
            self.probe.target,
            decision,
            summary=f"stop requested: {self.stopper.description} (the hub ends this server while it answers)",
            outcome="requested",
            stopper=self.stopper.description,
            decided_at=datetime.now(timezone.utc),
            done_at=None,
        )

    def _seen(self, decision: Decision) -> None:
        self.last = decision
        self._metered(decision)
        if self.reporter is not None:
            self.reporter.decided(decision)
        self.sparkline.add(self.metrics.work_now(self.probe.target))

    def snooze(self, until: datetime | None) -> None:
        """Keep the server up until ``until`` (None: end the snooze), as ``lamplighter snooze`` does."""
        write_snooze(self.settings.keep_alive_file, until)
        summary = (
            f"snoozed until {format_time(until)} (status page)" if until else "snooze ended (status page)"
        )
        self.journal.record(
            self.probe.target, "snooze", summary, at=datetime.now(timezone.utc), stop_at=until
        )
        self.agent.wake()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())
        if self.reporter is not None:
            self._reporting = asyncio.ensure_future(self.reporter.run(self.agent.wake))

    async def _run(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._start_companion(stack)
                await self.agent.run()
        except LamplighterError:
            logger.exception("lamplighter: the in-server agent stopped")

    async def _start_companion(self, stack: contextlib.AsyncExitStack) -> None:
        """The row's companion (Studio Classic's culler), reading our own managers; the Studio apps
        endpoint is this very server, reached over loopback as the AWS extension does."""
        row, resolved = row_for(self.settings)
        if row.companion is None:
            return
        from lamplighter.platforms.studio_classic import InProcessView
        from lamplighter.remote.connection import Connection

        serverapp = self._serverapp
        token = getattr(getattr(serverapp, "identity_provider", None), "token", None) or None
        conn = await stack.enter_async_context(Connection(serverapp.connection_url, token=token))
        self.culler = row.companion(resolved, conn, view=InProcessView(serverapp.web_app))
        await stack.enter_async_context(companion_running(self.culler, self.journal))

    def status(self) -> dict[str, Any]:
        decision = self.last
        verdict: dict[str, Any] = (
            decision.to_dict() if decision else {"verdict": None, "reason": "no check yet", "reasons": []}
        )
        return {
            **verdict,
            "checks": self.agent.probes,
            "now": datetime.now(timezone.utc).isoformat(),
            "stopper": self.stopper.description,
            "settings": self.settings.redacted(),
            **({"kernel_gateway_apps": self.culler.status()} if self.culler is not None else {}),
        }


class StatusHandler(APIHandler):
    """``GET {base}lamplighter/api/status``: the verdict now; reading it is not activity."""

    _track_activity = False

    def initialize(self, agent: InServerAgent) -> None:
        self._agent = agent

    @web.authenticated
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self._agent.status()))


def _settings_from_config(serverapp: Any) -> Settings:
    config = Lamplighter(parent=serverapp)
    flags = {
        name: getattr(config, name) for name in config.trait_names() if getattr(config, name) is not None
    }
    flags.pop("config", None)
    flags.pop("parent", None)
    flags.pop("log", None)
    return load_settings(flags)


def _route_logs(serverapp: Any) -> None:
    """lamplighter's own log lines go to the server's log, and no line there carries a secret."""
    handlers = list(getattr(serverapp.log, "handlers", ()))
    guard_handlers(handlers)
    ours = logging.getLogger("lamplighter")
    for handler in handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    if handlers:
        ours.propagate = False  # else each line shows twice where the root logger has a handler too


def _load_jupyter_server_extension(serverapp: Any) -> None:
    _route_logs(serverapp)
    settings = _settings_from_config(serverapp)
    agent = InServerAgent(serverapp, settings)
    base = serverapp.web_app.settings["base_url"]
    route = url_path_join(base, "lamplighter/api/status")
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (route, StatusHandler, {"agent": agent}),
            (url_path_join(base, "lamplighter/metrics"), MetricsHandler, {"metrics": agent.metrics}),
            (url_path_join(base, "lamplighter/snooze"), SnoozeHandler, {"source": agent}),
            (
                url_path_join(base, "lamplighter/"),
                PageHandler,
                {"source": agent, "sparkline": agent.sparkline},
            ),
        ],
    )
    ioloop.IOLoop.current().add_callback(agent.start)
    serverapp.log.info("lamplighter: watching this server in-process (%s)", agent.stopper.description)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "lamplighter.extension"}]
