"""The fleet check: every app of a SageMaker Studio domain, and whether lamplighter watches it.

``ListApps`` (all pages; it has no status or type filter, so filtering is done here) gives the apps.
For each InService JupyterLab or JupyterServer app, the check logs in with a presigned URL and reads the
agent's heartbeat file, ``~/.lamplighter/heartbeat.json``, through the Jupyter contents API with
``no_track_activity=1``, so looking never counts as activity. The agent rewrites that file at every
check and at least every ``heartbeat_interval``; it counts as running when the file is younger than
three of the intervals the agent itself recorded in it (the caller's ``heartbeat_interval`` only for
agents that did not record one).

A Code Editor app has no Jupyter API to read a file through. Its agent also logs the heartbeat as one
line (:data:`lamplighter.heartbeat.LOG_MARKER` + JSON) into the app's log, which SageMaker ships to the
CloudWatch log group ``/aws/sagemaker/studio``, stream ``{domain}/{space}/{AppType}/{AppName}`` (and
``…/LifecycleConfigOnStart``); given a CloudWatch Logs client, the check finds the newest such line
with ``FilterLogEvents`` (:func:`read_logged_heartbeat`). Without one, and for other apps, the status only.
Notebook instances' agents are read the same way (:mod:`lamplighter.sagemaker.fleet_notebooks`).

Agent states: ``running``; ``stale`` (a heartbeat, but too old: the agent stopped); ``no agent`` (no
heartbeat file); ``unknown`` (the app could not be read: not reachable, login refused, a shared space
with nobody to log in as); ``n/a`` (not a Jupyter app, or not InService).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lamplighter.errors import LamplighterError, MalformedAnswer, NotFound, SageMakerCallFailed
from lamplighter.heartbeat import DEFAULT_HEARTBEAT_PATH, LOG_MARKER, Heartbeat, heartbeat_from_log_line
from lamplighter.model import format_duration
from lamplighter.remote.connection import Connection
from lamplighter.sagemaker.client import ACCESS_DENIED_CODES, call, list_apps, sagemaker_client
from lamplighter.sagemaker.identity import JUPYTER_APP_TYPES, StudioApp
from lamplighter.sagemaker.login import presigned_connection

__all__ = [
    "DEFAULT_HEARTBEAT_PATH",
    "AgentState",
    "FleetEntry",
    "Heartbeat",
    "agent_fields",
    "app_log_prefix",
    "fleet_status",
    "idle_for",
    "judge",
    "judge_heartbeat",
    "logged_agent",
    "read_heartbeat",
    "read_logged_heartbeat",
]

logger = logging.getLogger(__name__)


class AgentState(enum.Enum):
    """Whether an app's agent is running, as far as the fleet check can tell."""

    RUNNING = "running"
    STALE = "stale"
    NO_AGENT = "no agent"
    UNKNOWN = "unknown"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class FleetEntry:
    """One app of the domain with what its heartbeat says."""

    app: StudioApp
    agent: AgentState
    heartbeat: Heartbeat | None
    detail: str  # why the state is unknown or stale, or the agent's reason

    def idle_for(self, now: datetime) -> timedelta | None:
        return idle_for(self.heartbeat, now)

    def to_json(self, now: datetime) -> dict[str, Any]:
        identity = self.app.identity
        return {
            "kind": "app",
            "domain_id": identity.domain_id,
            "space": identity.space_name,
            "user_profile": identity.user_profile_name,
            "app_type": identity.app_type,
            "app_name": identity.app_name,
            "status": self.app.status,
            "created_at": self.app.created_at.isoformat() if self.app.created_at else None,
            **agent_fields(self.agent, self.heartbeat, self.detail, now),
        }


def agent_fields(agent: AgentState, beat: Heartbeat | None, detail: str, now: datetime) -> dict[str, Any]:
    """What an app's or a notebook instance's heartbeat says, as ``--json`` shows it."""

    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    idle = idle_for(beat, now)
    return {
        "agent": agent.value,
        "verdict": beat.verdict if beat else None,
        "heartbeat_at": iso(beat.updated_at) if beat else None,
        "idle_since": iso(beat.idle_since) if beat else None,
        "idle_seconds": round(idle.total_seconds()) if idle is not None else None,
        "stop_at": iso(beat.stop_at) if beat else None,
        "detail": detail,
    }


async def read_heartbeat(conn: Connection, path: str = DEFAULT_HEARTBEAT_PATH) -> Heartbeat | None:
    """The heartbeat through the contents API (untracked); ``None`` when there is no file."""
    try:
        model = await conn.get(f"api/contents/{path}", params={"content": "1", "type": "file"})
    except NotFound:
        return None
    if not isinstance(model, dict) or not isinstance(model.get("content"), str):
        raise MalformedAnswer(f"GET {conn.display_url}api/contents/{path}: not a file model")
    text = model["content"]
    if model.get("format") == "base64":
        text = base64.b64decode(text).decode("utf-8", errors="replace")
    return Heartbeat.parse_text(text)


def idle_for(beat: Heartbeat | None, now: datetime) -> timedelta | None:
    """How long the agent has seen its server idle, by its heartbeat (``None``: no heartbeat, or busy)."""
    if beat is None or beat.idle_since is None:
        return None
    return max(timedelta(0), now - beat.idle_since)


def app_log_prefix(app: StudioApp) -> str:
    """The app's CloudWatch log stream, ``{domain}/{space or user}/{AppType}/{AppName}``."""
    identity = app.identity
    return f"{identity.domain_id}/{identity.owner}/{identity.app_type}/{identity.app_name}"


async def read_logged_heartbeat(
    logs: Any, prefix: str, *, log_group: str, now: datetime, lookback: timedelta = timedelta(days=1)
) -> Heartbeat | None:
    """The newest heartbeat line since ``now - lookback`` in the stream ``prefix`` and those below it
    (``prefix/…``), or ``None``. Lines that are not a heartbeat are skipped, whatever they hold."""
    params: dict[str, Any] = {
        "logGroupName": log_group,
        "logStreamNamePrefix": prefix,
        "filterPattern": f'"{LOG_MARKER}"',
        "startTime": int((now - lookback).timestamp() * 1000),
    }
    newest: Heartbeat | None = None
    while True:
        answer = await call(logs, "FilterLogEvents", **params)
        for event in answer.get("events") or []:
            stream = str(event.get("logStreamName") or "")
            if stream != prefix and not stream.startswith(prefix + "/"):
                continue  # another app or instance whose name starts with this one's
            beat = heartbeat_from_log_line(str(event.get("message") or ""))
            if beat is not None and (newest is None or beat.updated_at > newest.updated_at):
                newest = beat
        token = answer.get("nextToken")
        if not token:
            return newest
        params["nextToken"] = token


async def logged_agent(
    logs: Any, prefix: str, *, log_group: str, now: datetime, interval: timedelta
) -> tuple[AgentState, Heartbeat | None, str]:
    """The agent's state by its newest heartbeat line under ``prefix`` (see :func:`read_logged_heartbeat`)."""
    try:
        beat = await read_logged_heartbeat(logs, prefix, log_group=log_group, now=now)
    except SageMakerCallFailed as exc:
        if exc.code == "ResourceNotFoundException":
            return AgentState.NO_AGENT, None, f"no log group {log_group}"
        if exc.code in ACCESS_DENIED_CODES:
            return AgentState.UNKNOWN, None, f"{exc} on {log_group}"
        return AgentState.UNKNOWN, None, " ".join(str(exc).split())[:300]
    except LamplighterError as exc:
        return AgentState.UNKNOWN, None, " ".join(str(exc).split())[:300]
    if beat is None:
        return AgentState.NO_AGENT, None, f"no heartbeat line in {log_group}"
    return judge(beat, now=now, interval=interval)


async def _check_logged_app(
    app: StudioApp, *, logs: Any, log_group: str, now: datetime, interval: timedelta
) -> FleetEntry:
    state, beat, detail = await logged_agent(
        logs, app_log_prefix(app), log_group=log_group, now=now, interval=interval
    )
    return FleetEntry(app, state, beat, detail)


async def fleet_status(
    domain_id: str,
    *,
    now: datetime,
    region: str | None = None,
    endpoint_url: str | None = None,
    verify_tls: bool = True,
    heartbeat_interval: timedelta = timedelta(seconds=60),
    heartbeat_path: str = DEFAULT_HEARTBEAT_PATH,
    login_as: str | None = None,
    include_deleted: bool = False,
    concurrency: int = 4,
    page_size: int = 100,
    client: Any | None = None,
    logs_client: Any | None = None,
    log_group: str = "/aws/sagemaker/studio",
) -> list[FleetEntry]:
    """Every app of the domain (Deleted ones only with ``include_deleted``) with its agent's state.

    ``login_as`` names the user profile used for shared spaces, which have no owner to log in as.
    A failure to read one app makes that app ``unknown``; it never stops the check.
    """
    client = client or sagemaker_client(region=region, endpoint_url=endpoint_url)
    apps = await list_apps(client, domain_id, page_size=page_size, region=region)
    if not include_deleted:
        apps = [app for app in apps if app.status != "Deleted"]
    apps.sort(key=lambda a: (a.identity.owner, a.identity.app_type, a.identity.app_name))
    limit = asyncio.Semaphore(max(1, concurrency))

    async def check(app: StudioApp) -> FleetEntry:
        logged = app.identity.app_type == "CodeEditor" and logs_client is not None
        if app.identity.app_type not in JUPYTER_APP_TYPES and not logged:
            return FleetEntry(app, AgentState.NOT_APPLICABLE, None, f"{app.identity.app_type}: status only")
        if app.status != "InService":
            return FleetEntry(app, AgentState.NOT_APPLICABLE, None, f"app is {app.status}")
        if logged:
            async with limit:
                return await _check_logged_app(
                    app, logs=logs_client, log_group=log_group, now=now, interval=heartbeat_interval
                )
        async with limit:
            return await _check_jupyter_app(
                app,
                client=client,
                now=now,
                verify_tls=verify_tls,
                interval=heartbeat_interval,
                path=heartbeat_path,
                login_as=login_as,
            )

    return list(await asyncio.gather(*(check(app) for app in apps)))


async def _check_jupyter_app(
    app: StudioApp,
    *,
    client: Any,
    now: datetime,
    verify_tls: bool,
    interval: timedelta,
    path: str,
    login_as: str | None,
) -> FleetEntry:
    identity = app.identity
    try:
        conn = await presigned_connection(
            identity.domain_id,
            user_profile=identity.user_profile_name,
            shared_space_user=login_as,
            space=identity.space_name,
            app_type=identity.app_type,
            verify_tls=verify_tls,
            client=client,
            session_expiration_s=1800,  # the shortest AWS allows: we read one file
        )
        async with conn:
            beat = await read_heartbeat(conn, path)
    except LamplighterError as exc:
        logger.debug("fleet: cannot read %s: %s", identity.label, exc)
        return FleetEntry(app, AgentState.UNKNOWN, None, " ".join(str(exc).split())[:300])
    if beat is None:
        return FleetEntry(app, AgentState.NO_AGENT, None, f"no {path}")
    return judge_heartbeat(app, beat, now=now, interval=interval)


def judge_heartbeat(app: StudioApp, beat: Heartbeat, *, now: datetime, interval: timedelta) -> FleetEntry:
    """Running or stale, by the agent's own heartbeat interval (``interval`` for agents that did not say)."""
    return FleetEntry(app, *judge(beat, now=now, interval=interval))


def judge(beat: Heartbeat, *, now: datetime, interval: timedelta) -> tuple[AgentState, Heartbeat, str]:
    """:func:`judge_heartbeat` for any watched thing: the state, the heartbeat, why."""
    if beat.stale(now, interval):
        age = now - beat.updated_at
        every = format_duration(beat.interval or interval)
        return AgentState.STALE, beat, f"last heartbeat {format_duration(age)} ago (written every {every})"
    return AgentState.RUNNING, beat, beat.reason
