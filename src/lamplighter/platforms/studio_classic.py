"""Studio Classic as a platform: cull the billed KernelGateway apps from the JupyterServer app.

``watch --platform sagemaker`` in a Studio Classic JupyterServer app (its metadata says ``AppType:
JupyterServer``), and the in-server extension there, run a :class:`ClassicCuller` beside the usual agent.
Each pass reads the server's kernels and terminals (untracked REST, or the managers in process) and the
user's KernelGateway apps, judges every app with :func:`lamplighter.sagemaker.classic.decide_app`, and
deletes those past their deadline, through Studio Classic's own ``{base}sagemaker/api/apps`` endpoint
(:class:`StudioAppsEndpoint`: no IAM permission needed, as the AWS extension does) or ``DeleteApp``
(:class:`SageMakerApps`, which also knows each app's creation time). It sleeps until the soonest deadline.

The JupyterServer app itself runs on a free instance: its agent's stop is :class:`KeepServer` unless
``classic_stop_server`` asks for ``DeleteApp`` of it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from lamplighter.errors import LamplighterError, NotFound, SageMakerCallFailed
from lamplighter.journal import Journal
from lamplighter.model import (
    Action,
    Decision,
    StopOutcome,
    StopResult,
    TerminalInfo,
    format_time,
)
from lamplighter.remote.connection import Connection
from lamplighter.sagemaker.classic import (
    ClassicKernel,
    InstanceTimeouts,
    KernelGatewayApp,
    app_target,
    apps_from_list_apps,
    decide_app,
    parse_apps_endpoint,
    parse_classic_kernels,
    parse_terminals,
    place,
)
from lamplighter.sagemaker.identity import AppIdentity
from lamplighter.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = [
    "AppVerdict",
    "ClassicApps",
    "ClassicCuller",
    "InProcessView",
    "KeepServer",
    "RestView",
    "SageMakerApps",
    "ServerView",
    "StudioAppsEndpoint",
]

logger = logging.getLogger(__name__)

_MIN_SLEEP_S = 0.01


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- what runs on the server ---------------------------------------------------------------------


class ServerView(Protocol):
    """Reads the JupyterServer's kernels (with their app) and terminals without creating activity."""

    async def read(self) -> tuple[tuple[ClassicKernel, ...], tuple[TerminalInfo, ...]]: ...


class RestView:
    """Through the server's REST API (untracked: every request carries ``no_track_activity=1``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def read(self) -> tuple[tuple[ClassicKernel, ...], tuple[TerminalInfo, ...]]:
        kernels, sessions, terminals = await asyncio.gather(
            self._conn.get("api/kernels"), self._optional("api/sessions"), self._optional("api/terminals")
        )
        return parse_classic_kernels(kernels, sessions), parse_terminals(terminals)

    async def _optional(self, path: str) -> Any:
        try:
            return await self._conn.get(path)
        except NotFound:
            return []


class InProcessView:
    """The managers of the server we run in (the in-server extension): no HTTP at all."""

    def __init__(self, web_app: Any) -> None:
        self._settings = web_app.settings

    async def read(self) -> tuple[tuple[ClassicKernel, ...], tuple[TerminalInfo, ...]]:
        kernels = self._settings["kernel_manager"].list_kernels()
        manager = self._settings.get("terminal_manager")
        terminals = manager.list() if manager is not None else []
        return parse_classic_kernels(kernels), parse_terminals(terminals)


# -- the KernelGateway apps ----------------------------------------------------------------------


class ClassicApps(Protocol):
    """Lists the user's KernelGateway apps and deletes one."""

    @property
    def description(self) -> str: ...

    async def list(self) -> tuple[KernelGatewayApp, ...]: ...

    async def delete(self, app: KernelGatewayApp) -> StopResult: ...


class StudioAppsEndpoint:
    """Studio Classic's ``{base}sagemaker/api/apps``: GET lists the apps, DELETE ``/{name}`` deletes one.

    The JupyterServer's own SageMaker extension makes the call, so the execution role needs no
    permission; it does not say when an app was created (the culler counts from first sight).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def description(self) -> str:
        return "DELETE sagemaker/api/apps"

    async def list(self) -> tuple[KernelGatewayApp, ...]:
        return parse_apps_endpoint(await self._conn.get("sagemaker/api/apps"))

    async def delete(self, app: KernelGatewayApp) -> StopResult:
        try:
            await self._conn.request("DELETE", f"sagemaker/api/apps/{quote(app.app_name, safe='')}")
        except NotFound:
            return StopResult(StopOutcome.STOPPED, f"{app.label} is already gone")
        return StopResult(StopOutcome.STOPPING, f"{app.label}: delete accepted")


class SageMakerApps:
    """ListApps and DeleteApp for the user profile's KernelGateway apps (needs sagemaker:ListApps and
    sagemaker:DeleteApp on the execution role); ListApps says when each app was created."""

    def __init__(self, identity: AppIdentity, client: SageMakerClient | Any) -> None:
        self._identity = identity
        self._client = client

    @property
    def description(self) -> str:
        return "DeleteApp"

    async def list(self) -> tuple[KernelGatewayApp, ...]:
        from lamplighter.sagemaker.client import call

        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "DomainIdEquals": self._identity.domain_id,
                "UserProfileNameEquals": self._identity.user_profile_name or "",
                "MaxResults": 100,
            }
            if token:
                params["NextToken"] = token
            answer = await call(self._client, "ListApps", **params)
            items += answer.get("Apps") or []
            token = answer.get("NextToken")
            if not token:
                return apps_from_list_apps(items)

    async def delete(self, app: KernelGatewayApp) -> StopResult:
        from lamplighter.sagemaker.client import call

        params: dict[str, Any] = {
            "DomainId": self._identity.domain_id,
            "UserProfileName": self._identity.user_profile_name or "",
            "AppType": "KernelGateway",
            "AppName": app.app_name,
        }
        try:
            await call(self._client, "DeleteApp", **params)
        except SageMakerCallFailed as exc:
            if exc.code == "ResourceNotFound":
                return StopResult(StopOutcome.STOPPED, f"{app.label} is already gone")
            if exc.code == "ResourceInUse":  # already deleting
                return StopResult(StopOutcome.STOPPING, f"{app.label} is already being deleted")
            return StopResult(StopOutcome.FAILED, f"DeleteApp {app.app_name}: {exc}")
        return StopResult(StopOutcome.STOPPING, f"DeleteApp {app.app_name} accepted")


# -- the JupyterServer app -----------------------------------------------------------------------


class KeepServer:
    """The JupyterServer app runs on a free instance: its verdict is reported, the app kept."""

    @property
    def description(self) -> str:
        return "nothing: the Studio Classic JupyterServer app is free (classic_stop_server is off)"

    async def stop(self, decision: Decision) -> StopResult:
        return StopResult(
            StopOutcome.SKIPPED,
            "the JupyterServer app is kept (it is free; set classic_stop_server to delete it too)",
        )


# -- the culler ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppVerdict:
    """One app's verdict in a pass, and the delete's result when it was due."""

    app: KernelGatewayApp
    decision: Decision
    result: StopResult | None = None


class ClassicCuller:
    """Deletes the user's idle KernelGateway apps; :meth:`check` is one pass, :meth:`run` loops."""

    def __init__(
        self,
        settings: Settings,
        view: ServerView,
        apps: ClassicApps,
        *,
        target: str,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.apps = apps
        self.target = target
        self.clock = clock
        self._sleep = sleep
        self.timeouts = InstanceTimeouts.parse(
            settings.idle_timeout, settings.instance_idle_timeouts, setting="instance_idle_timeouts"
        )
        self.passes = 0
        self.last: tuple[AppVerdict, ...] = ()
        self._first_seen: dict[str, datetime] = {}
        self._seen_pending: set[str] = set()
        self._up_at: dict[str, datetime] = {}
        self._deleted_at: dict[str, datetime] = {}
        self._journaled: dict[str, Decision] = {}
        self._alarm = asyncio.Event()

    def wake(self) -> None:
        """Look again now (a kernel or terminal was just started or ended)."""
        self._alarm.set()

    async def check(self, journal: Journal) -> tuple[AppVerdict, ...]:
        """Read the server and the apps, judge every app, delete those past their deadline."""
        self.passes += 1
        (kernels, terminals), apps = await asyncio.gather(self.view.read(), self.apps.list())
        now = self.clock()
        names = {a.app_name for a in apps}
        # An app that left the list is forgotten: one re-created under the same name starts afresh.
        for table in (self._first_seen, self._deleted_at, self._journaled, self._up_at):
            for name in [n for n in table if n not in names]:
                del table[name]
        self._seen_pending &= names
        placements = place(apps, kernels, terminals)
        verdicts = []
        for app in apps:
            created = self._started(app, now)
            target = app_target(self.target, app.app_name)
            memory = journal.load_memory(target)
            decision = decide_app(
                app,
                placements[app.app_name],
                server_target=self.target,
                created_at=created,
                memory=memory,
                settings=self.settings,
                timeouts=self.timeouts,
                now=now,
                startup_grace=self.settings.startup_grace,
            )
            if decision.memory != memory:
                journal.save_memory(target, decision.memory, at=now)
            self._journal_decision(journal, target, app, decision, now)
            result = None
            if decision.action is Action.STOP:
                result = await self._delete(journal, target, app, decision, now)
            verdicts.append(AppVerdict(app, decision, result))
        self.last = tuple(verdicts)
        return self.last

    def _started(self, app: KernelGatewayApp, now: datetime) -> datetime:
        """The app's start for its verdict: its creation time (or first sight), or when it came up if
        this agent saw it Pending (a long start must not use up the grace its first kernel needs)."""
        created = app.created_at or self._first_seen.setdefault(app.app_name, now)
        if app.status == "Pending":
            self._seen_pending.add(app.app_name)
        elif app.app_name in self._seen_pending:
            created = max(created, self._up_at.setdefault(app.app_name, now))
        return created

    def _journal_decision(
        self, journal: Journal, target: str, app: KernelGatewayApp, decision: Decision, now: datetime
    ) -> None:
        if decision.changed_from(self._journaled.get(app.app_name)):
            journal.record_decision(target, decision, at=now)
            logger.info("%s: %s: %s", app.label, decision.action.value, decision.reason)
        self._journaled[app.app_name] = decision

    async def _delete(
        self, journal: Journal, target: str, app: KernelGatewayApp, decision: Decision, now: datetime
    ) -> StopResult | None:
        asked = self._deleted_at.get(app.app_name)
        if asked is not None and now - asked < self.settings.busy_recheck:
            return None  # asked a moment ago; the app is still on its way out
        if self.settings.dry_run or self.settings.action == "none":
            result = StopResult(StopOutcome.SKIPPED, f"would delete {app.label} ({self.apps.description})")
        else:
            logger.info("deleting %s: %s", app.label, decision.reason)
            try:
                result = await self.apps.delete(app)
            except LamplighterError as exc:
                result = StopResult(StopOutcome.FAILED, f"cannot delete {app.label}: {exc}")
        self._deleted_at[app.app_name] = now
        log = logger.error if result.outcome is StopOutcome.FAILED else logger.info
        log("%s: %s", app.label, result.detail)
        journal.record_stop(
            target,
            decision,
            summary=f"delete {result.outcome.value}: {result.detail}",
            outcome=result.outcome.value,
            stopper=self.apps.description,
            decided_at=now,
            done_at=self.clock(),
        )
        return result

    def next_check_at(self, now: datetime) -> datetime:
        """The soonest moment any verdict may change, and at most a probe interval away."""
        soonest = now + self.settings.effective_probe_interval
        for verdict in self.last:
            soonest = min(soonest, verdict.decision.next_check_at)
            if verdict.result is not None:
                soonest = min(soonest, now + self.settings.busy_recheck)
        return max(soonest, now + timedelta(seconds=_MIN_SLEEP_S))

    async def run(self, journal: Journal) -> None:
        """Pass after pass until cancelled; a failed pass is logged and retried (never counted as idle)."""
        while True:
            try:
                await self.check(journal)
                wake_at = self.next_check_at(self.clock())
            except LamplighterError as exc:
                logger.warning("%s: cannot check the KernelGateway apps: %s", self.target, exc)
                self.last = ()
                wake_at = self.clock() + min(self.settings.busy_recheck, timedelta(seconds=10))
            await self._pause((wake_at - self.clock()).total_seconds())

    async def _pause(self, seconds: float) -> None:
        seconds = max(seconds, _MIN_SLEEP_S)
        if self._sleep is not None:
            await self._sleep(seconds)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._alarm.wait(), seconds)
        self._alarm.clear()

    def status(self) -> list[dict[str, Any]]:
        """The last pass, per app, for the status endpoint."""
        return [
            {
                "app_name": v.app.app_name,
                "instance_type": v.app.instance_type,
                **v.decision.to_dict(),
                "deleted": v.result.detail if v.result is not None else None,
            }
            for v in self.last
        ]


def describe_pass(verdicts: tuple[AppVerdict, ...]) -> str:
    """One line for logs: each app and its verdict."""
    return (
        "; ".join(
            f"{v.app.app_name}: {v.decision.action.value} (stop at {format_time(v.decision.stop_at)})"
            for v in verdicts
        )
        or "no KernelGateway apps"
    )
