"""SageMaker's native idle shutdown, made safe: its idle clock is fed while lamplighter's work clock runs.

SageMaker Studio's own idle shutdown (``AppLifecycleManagement.IdleSettings``) polls ``GET /api/idle``
of ``jupyter-activity-monitor-extension``, which answers ``{"lastActiveTimestamp": ...}``: the latest of
the session kernels' and the terminals' ``last_activity``, the time of the first ``/api/idle`` request,
and the timestamp in ``/tmp/.sagemaker-last-active-timestamp`` (UTC, ``%Y-%m-%dT%H:%M:%S.%fZ``, one
line), never moving backwards (``handler.py`` and ``idle_status_detector.py`` of version 0.3.2). It does
not look at ``execution_state``: a silent busy cell or a ``nohup`` job looks idle to it, and the app is
deleted under the job.

:class:`NativeGuard` takes each of the agent's decisions and writes the work clock's last moment
(``Memory.last_work``: *now* while work runs, the last busy sample after) into that file whenever it
has moved on since the guard last wrote. So the native clock is fresh exactly while lamplighter sees
work, and the guard never writes otherwise: interaction is already in the kernels' and terminals'
``last_activity``, which the extension reads itself, and a remembered moment from before the agent
started is not written. The file is never moved backwards (another writer may be ahead), and it is
replaced atomically, so the extension never reads half a line.

Idle kernels and terminals are culled: one by one by the policy (``kernel_timeout`` and
``terminal_timeout`` default to ``idle_timeout`` under ``native_guard``, in :mod:`lamplighter.settings`),
and all of them once the whole app is past its deadline with ``--action none``, where
:class:`NativeHandOff` takes the place of the stop: SageMaker's docs say open ones hold off the native
shutdown, and past the deadline nothing in the app is working.
"""

from __future__ import annotations

import functools
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lamplighter.errors import LamplighterError
from lamplighter.model import Decision, ServerSnapshot, StopOutcome, StopResult
from lamplighter.platforms.base import Probe

__all__ = [
    "TIMESTAMP_FORMAT",
    "NativeGuard",
    "NativeHandOff",
    "format_native_timestamp",
    "read_native_timestamp",
]

logger = logging.getLogger(__name__)

#: The one format the extension parses (``datetime.strptime``: the fraction is required).
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_native_timestamp(moment: datetime) -> str:
    """``2026-01-01T12:00:00.000000Z``: a UTC moment as the extension reads it."""
    return moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def read_native_timestamp(path: Path) -> datetime | None:
    """The file's moment (aware UTC), or ``None`` when it is missing or unreadable, as the extension says."""
    try:
        text = path.read_text().strip()
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class NativeGuard:
    """Feeds the native idle clock from the agent's decisions (pass :meth:`feed` as ``on_decision``).

    ``since`` is the work clock's moment remembered when the agent started (the journal's memory): it
    is not written again, so restarting the agent creates no activity.
    """

    def __init__(self, path: Path, *, since: datetime | None = None) -> None:
        self.path = path
        self.written: datetime | None = since
        self.writes = 0
        self._failing = False

    def feed(self, decision: Decision) -> None:
        moment = decision.memory.last_work
        if moment is None or (self.written is not None and moment <= self.written):
            return
        self.written = moment
        current = read_native_timestamp(self.path)
        if current is not None and current >= moment:
            return  # another writer is ahead: the extension already sees later activity
        try:
            self._replace(format_native_timestamp(moment) + "\n")
        except OSError as exc:
            if not self._failing:
                logger.warning("native guard: cannot write %s: %s", self.path, exc.strerror)
            self._failing = True
            return
        self._failing = False
        self.writes += 1
        logger.debug("native guard: work at %s written to %s", moment.isoformat(), self.path)

    def _replace(self, text: str) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            # /tmp is sticky: a file another user made cannot be replaced, but may still be writable.
            with self.path.open("w") as handle:
                handle.write(text)


class NativeHandOff:
    """The stop under ``--native-guard --action none``: leave the app to SageMaker, culling what holds it.

    Runs only on a STOP verdict, when nothing in the app works: every idle kernel and (unless
    ``keep_terminals``) every terminal is shut down, so the native shutdown is not held off. It never
    stops the app itself, and reports SKIPPED.
    """

    def __init__(self, probe: Probe, *, keep_terminals: bool = False) -> None:
        self.probe = probe
        self.keep_terminals = keep_terminals

    @property
    def description(self) -> str:
        return "SageMaker's own idle shutdown (--native-guard --action none)"

    async def stop(self, decision: Decision) -> StopResult:
        try:
            snap = await self.probe.snapshot()
        except LamplighterError as exc:
            return StopResult(StopOutcome.SKIPPED, f"left to SageMaker's idle shutdown; cannot look: {exc}")
        done: list[str] = []
        failed: list[str] = []
        for label, cull in self._culls(snap):
            try:
                await cull()
                done.append(label)
            except LamplighterError as exc:
                logger.warning("native guard: cannot shut down %s: %s", label, exc)
                failed.append(label)
        parts = [f"shut down {', '.join(done)}"] if done else []
        parts += [f"could not shut down {', '.join(failed)}"] if failed else []
        detail = "left to SageMaker's idle shutdown" + (f": {'; '.join(parts)}" if parts else "")
        return StopResult(StopOutcome.SKIPPED, detail)

    def _culls(self, snap: ServerSnapshot) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for kernel in snap.kernels:
            if kernel.execution_state in ("idle", "dead"):  # a busy one would have kept the app
                out.append((kernel.label, functools.partial(self.probe.cull_kernel, kernel.id)))
        if not self.keep_terminals:
            for terminal in snap.terminals:
                out.append((terminal.label, functools.partial(self.probe.cull_terminal, terminal.name)))
        return out
