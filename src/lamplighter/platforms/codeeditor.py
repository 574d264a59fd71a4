"""The probe for Code Editor apps (SageMaker Code Editor, code-server, openvscode-server).

These editors have no Jupyter API: no kernels, no terminals to list or cull. What they do leave behind
is activity evidence, which this probe reads into :class:`~lamplighter.model.ActivityReading`\\ s on the
*interaction* clock of a :class:`~lamplighter.model.ServerSnapshot`:

- folders whose newest file shows the last edit: VS Code's local ``History`` (a snapshot per save) and
  ``Backups`` (unsaved and untitled editors), under ``data/User/`` of the editor's server-data folder.
  The AWS Code Editor auto-stop sample reads them under ``/opt/amazon/sagemaker/sagemaker-code-editor-
  server-data``; SageMaker Distribution 2.4 and later keep that folder in the home,
  ``/home/sagemaker-user/sagemaker-code-editor-server-data``. Both layouts are looked for on every probe
  (the first that exists wins), or ``data_dirs`` names the folder (``--code-editor-data-dir``);
- files that hold a timestamp: ``/tmp/.sagemaker-last-active-timestamp``, which SageMaker's idle
  extension rewrites (ISO 8601) on every edit, editor switch, selection and terminal use; an empty or
  unreadable file counts by its modification time (code-server's ``~/.local/share/code-server/heartbeat``
  is such a file);
- code-server's ``GET /healthz`` (``{"status": "alive"|"expired", "lastHeartbeat": <ms epoch>}``),
  where a URL is given.

Work (a script running in the editor's terminal) is not seen here: the process and GPU signals see it.

The app's start, which the policy's startup grace counts from, is the create time of the editor
server's process (``server_pid``, or the process listening on ``server_port``); without one, the
agent's start. Never the oldest activity file: those folders may survive from an earlier session,
and an old "start" would skip the grace and stop a fresh app at once (the AWS sample's bug: an app
deleted two minutes after launch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil

from lamplighter.errors import MalformedAnswer, Unsupported
from lamplighter.model import ActivityReading, Clock, ServerSnapshot, format_time, parse_timestamp
from lamplighter.processinfo import find_listening_pid
from lamplighter.remote.connection import Connection

__all__ = [
    "DEFAULT_ACTIVITY_DIRS",
    "DEFAULT_TIMESTAMP_FILES",
    "SAGEMAKER_DATA_DIRS",
    "CodeEditorOptions",
    "CodeEditorProbe",
    "activity_dirs_in",
    "find_activity_dirs",
]

logger = logging.getLogger(__name__)

UTC = timezone.utc

# Newest layout first: SageMaker Distribution >= 2.4, then the images before it.
SAGEMAKER_DATA_DIRS: tuple[Path, ...] = (
    Path("/home/sagemaker-user/sagemaker-code-editor-server-data"),
    Path("/opt/amazon/sagemaker/sagemaker-code-editor-server-data"),
)


def activity_dirs_in(data_dir: Path) -> tuple[Path, ...]:
    """``History`` and ``Backups`` of a VS Code server-data folder."""
    return (data_dir / "data" / "User" / "History", data_dir / "data" / "User" / "Backups")


def find_activity_dirs(data_dirs: tuple[Path, ...]) -> tuple[Path, ...]:
    """The activity folders of the first server-data folder that exists (else of the first named)."""
    for data_dir in data_dirs:
        if data_dir.is_dir():
            return activity_dirs_in(data_dir)
    return activity_dirs_in(data_dirs[0]) if data_dirs else ()


DEFAULT_ACTIVITY_DIRS: tuple[Path, ...] = activity_dirs_in(SAGEMAKER_DATA_DIRS[0])
DEFAULT_TIMESTAMP_FILES: tuple[Path, ...] = (Path("/tmp/.sagemaker-last-active-timestamp"),)
_TIMESTAMP_MAX_BYTES = 200


@dataclass(frozen=True)
class CodeEditorOptions:
    """Where a Code Editor app leaves its activity evidence, and how to find its server process."""

    activity_dirs: tuple[Path, ...] | None = None
    """Folders whose newest file (by modification time, symlinks not followed) is the last edit;
    None: ``History`` and ``Backups`` of the first of ``data_dirs`` that exists, looked up each probe."""
    data_dirs: tuple[Path, ...] = SAGEMAKER_DATA_DIRS
    """Server-data folders to look for, in order, when ``activity_dirs`` is None."""
    timestamp_files: tuple[Path, ...] = DEFAULT_TIMESTAMP_FILES
    """Files holding an ISO 8601 last-active time (else their modification time counts)."""
    healthz_url: str | None = None
    """code-server's ``/healthz`` URL (``http://127.0.0.1:8080/healthz``); None to skip."""
    server_pid: int | None = None
    """The editor server's pid: its create time is the app's start."""
    server_port: int | None = None
    """The editor server's port, to find its pid when ``server_pid`` is not given."""
    request_timeout_s: float = 5.0
    """Seconds to wait for ``/healthz``."""


class CodeEditorProbe:
    """Observes a Code Editor app through files and its heartbeat (see the module docstring).

    ``agent_started`` is when the agent started: the app's start when no editor process is known.
    ``transport`` replaces httpx's transport, for tests.
    """

    def __init__(
        self,
        options: CodeEditorOptions | None = None,
        *,
        agent_started: datetime,
        target: str = "code-editor",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options or CodeEditorOptions()
        self._agent_started = agent_started.astimezone(UTC)
        self._target = target
        self._transport = transport
        self._started_source = ""
        self._server: psutil.Process | None = None

    @property
    def target(self) -> str:
        return self._target

    async def snapshot(self) -> ServerSnapshot:
        """Read every activity source now; raises a ``RemoteError`` only when ``/healthz`` cannot be read."""
        readings = list(await asyncio.to_thread(self._read_files))
        if self.options.healthz_url:
            readings.append(await self._read_healthz(self.options.healthz_url))
        started = await asyncio.to_thread(self._started)
        seen = [reading.at for reading in readings if reading.at is not None]
        return ServerSnapshot(
            target=self._target,
            started=started,
            last_activity=max([started, *seen]),
            connections=0,
            readings=tuple(readings),
        )

    async def cull_kernel(self, kernel_id: str) -> None:
        raise Unsupported(f"{self._target}: a Code Editor app has no Jupyter kernels to cull")

    async def cull_terminal(self, name: str) -> None:
        raise Unsupported(f"{self._target}: a Code Editor app has no Jupyter terminals to cull")

    # -- the app's start ----------------------------------------------------------------------

    def _started(self) -> datetime:
        if self._server is not None and not self._server.is_running():
            self._server = None  # the editor restarted: its new process starts the app anew
        pid = self.options.server_pid
        if self._server is None and pid is None and self.options.server_port is not None:
            pid = find_listening_pid(self.options.server_port)  # scans every socket: only until found
        if self._server is None and pid is not None:
            with contextlib.suppress(psutil.Error):
                self._server = psutil.Process(pid)
        started, source = self._agent_started, "the agent's start (no editor server process known)"
        if self._server is not None:
            try:
                started = datetime.fromtimestamp(self._server.create_time(), UTC)
                source = f"the start of editor server pid {self._server.pid}"
            except psutil.Error:
                source = f"the agent's start (editor server pid {self._server.pid} is gone)"
        elif pid is not None:
            source = f"the agent's start (editor server pid {pid} is gone)"
        if source != self._started_source:
            self._started_source = source
            logger.info("%s: app start %s, from %s", self._target, format_time(started), source)
        return started

    # -- files ----------------------------------------------------------------------------------

    def _read_files(self) -> list[ActivityReading]:
        folders = self.options.activity_dirs
        if folders is None:
            folders = find_activity_dirs(self.options.data_dirs)
        readings = [_newest_in(folder) for folder in folders]
        readings += [_timestamp_file(path) for path in self.options.timestamp_files]
        return readings

    # -- code-server /healthz -------------------------------------------------------------------

    async def _read_healthz(self, url: str) -> ActivityReading:
        where = f"GET {url}"
        # The one HTTP client of the project, so failures map onto the same errors as every probe.
        base, _, endpoint = url.rpartition("/")
        async with Connection(
            base + "/", timeout_s=self.options.request_timeout_s, transport=self._transport
        ) as conn:
            # code-server is no Jupyter server: send the bare path, without Jupyter's no_track_activity.
            body: Any = await conn.request("GET", endpoint, track_activity=True)
        try:
            status = str(body.get("status", "?"))
            beat_ms = body.get("lastHeartbeat")
            at = datetime.fromtimestamp(float(beat_ms) / 1000.0, UTC) if beat_ms else None
        except (ValueError, TypeError, AttributeError, OverflowError, OSError) as exc:
            raise MalformedAnswer(f"{where}: not a code-server health answer", status=200) from exc
        if at is None:
            detail = f"code-server has had no heartbeat yet ({status})"
        else:
            detail = f"code-server heartbeat at {format_time(at)} ({status})"
        return ActivityReading(source="code-server healthz", clock=Clock.INTERACTION, at=at, detail=detail)


def _newest_in(folder: Path) -> ActivityReading:
    """The newest file under ``folder`` by ``lstat`` (a dangling symlink must not break the walk)."""
    source = f"code-editor {folder.name.lower() or folder}"
    if not folder.is_dir():
        return ActivityReading(source, Clock.INTERACTION, None, f"{folder} does not exist (yet)")
    newest: tuple[float, str] | None = None
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            with contextlib.suppress(OSError):
                mtime = os.lstat(path).st_mtime
                if newest is None or mtime > newest[0]:
                    newest = (mtime, path)
    if newest is None:
        return ActivityReading(source, Clock.INTERACTION, None, f"{folder} has no files yet")
    at = datetime.fromtimestamp(newest[0], UTC)
    rel = os.path.relpath(newest[1], folder)
    return ActivityReading(
        source, Clock.INTERACTION, at, f"{folder.name}/{rel} modified at {format_time(at)}"
    )


def _timestamp_file(path: Path) -> ActivityReading:
    """A file holding a last-active time; its modification time when it holds none we can read."""
    source = f"activity file {path.name}"
    try:
        # O_NOFOLLOW: the file sits in world-writable /tmp, where anyone can plant a symlink.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            text = handle.read(_TIMESTAMP_MAX_BYTES).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return ActivityReading(source, Clock.INTERACTION, None, f"{path} does not exist (yet)")
    except OSError as exc:
        return ActivityReading(source, Clock.INTERACTION, None, f"{path} cannot be read ({exc.strerror})")
    if text:
        with contextlib.suppress(ValueError):
            at = parse_timestamp(text)
            return ActivityReading(
                source, Clock.INTERACTION, at, f"{path} says last active at {format_time(at)}"
            )
    at = datetime.fromtimestamp(info.st_mtime, UTC)
    return ActivityReading(source, Clock.INTERACTION, at, f"{path} modified at {format_time(at)}")
