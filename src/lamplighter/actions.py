"""Stoppers that are not a platform's own: run a command, do nothing, or pretend (dry run).

``build_stopper`` picks the stopper the settings ask for; it is the one place that maps
``--action`` and ``--platform`` onto an implementation.
"""

from __future__ import annotations

import asyncio
import os

from lamplighter.errors import ConfigError
from lamplighter.model import Decision, StopOutcome, StopResult, format_time
from lamplighter.platforms.base import Stopper
from lamplighter.platforms.jupyter import JupyterShutdown
from lamplighter.remote.connection import Connection
from lamplighter.settings import Settings

__all__ = ["CommandStopper", "DryRun", "NoStop", "build_stopper"]

_OUTPUT_TAIL = 500


class CommandStopper:
    """Runs a shell command to stop the app; exit status 0 counts as stopped.

    The command gets ``LAMPLIGHTER_TARGET``, ``LAMPLIGHTER_REASON``, ``LAMPLIGHTER_IDLE_SINCE`` and
    ``LAMPLIGHTER_STOP_AT`` (ISO-8601 UTC) in its environment.
    """

    def __init__(self, command: str, target: str, *, timeout_s: float = 300.0) -> None:
        self._command = command
        self._target = target
        self._timeout_s = timeout_s

    @property
    def description(self) -> str:
        return f"command {self._command!r}"

    async def stop(self, decision: Decision) -> StopResult:
        env = dict(os.environ)
        env.update(
            LAMPLIGHTER_TARGET=self._target,
            LAMPLIGHTER_REASON=decision.reason,
            LAMPLIGHTER_REASONS="\n".join(decision.reasons),
            LAMPLIGHTER_IDLE_SINCE=decision.idle_since.isoformat() if decision.idle_since else "",
            LAMPLIGHTER_STOP_AT=decision.stop_at.isoformat() if decision.stop_at else "",
        )
        try:
            process = await asyncio.create_subprocess_shell(
                self._command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return StopResult(StopOutcome.FAILED, f"cannot run the command: {exc.strerror}")
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self._timeout_s)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            return StopResult(StopOutcome.FAILED, f"the command did not finish within {self._timeout_s:g} s")
        tail = output.decode(errors="replace")[-_OUTPUT_TAIL:].strip()
        if process.returncode == 0:
            return StopResult(StopOutcome.STOPPED, "the command exited 0" + (f": {tail}" if tail else ""))
        return StopResult(
            StopOutcome.FAILED, f"the command exited {process.returncode}" + (f": {tail}" if tail else "")
        )


class NoStop:
    """``--action none``: the verdict is reported and journaled, nothing is stopped."""

    @property
    def description(self) -> str:
        return "nothing (--action none)"

    async def stop(self, decision: Decision) -> StopResult:
        return StopResult(
            StopOutcome.SKIPPED, f"action is none: would stop (stop_at {format_time(decision.stop_at)})"
        )


class DryRun:
    """``--dry-run``: says what the real stopper would do, and does nothing."""

    def __init__(self, real: Stopper) -> None:
        self._real = real

    @property
    def description(self) -> str:
        return f"dry run of {self._real.description}"

    async def stop(self, decision: Decision) -> StopResult:
        return StopResult(StopOutcome.SKIPPED, f"dry run: would stop with {self._real.description}")


def build_stopper(settings: Settings, conn: Connection) -> Stopper:
    """The stopper for ``--action``/``--platform``, wrapped in :class:`DryRun` when asked."""
    stopper: Stopper
    if settings.action == "none":
        return NoStop()
    if settings.action == "command":
        if not settings.command:
            raise ConfigError("command: --action command needs --command 'shell command'")
        stopper = CommandStopper(settings.command, conn.display_url)
    elif settings.platform == "sagemaker":
        from lamplighter.platforms.sagemaker import sagemaker_stopper_from_settings

        stopper = sagemaker_stopper_from_settings(settings)
    else:
        stopper = JupyterShutdown(conn, verify_timeout_s=settings.stop_verify_timeout.total_seconds())
    return DryRun(stopper) if settings.dry_run else stopper
