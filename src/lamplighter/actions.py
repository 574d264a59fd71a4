"""Stoppers that are not a platform's own: run a command, do nothing, or pretend (dry run).

``build_stopper`` picks the stopper the settings ask for; it is the one place that maps
``--action`` and ``--platform`` onto an implementation.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from lamplighter.errors import ConfigError
from lamplighter.model import Decision, StopOutcome, StopResult, format_time
from lamplighter.platforms.base import Stopper
from lamplighter.platforms.jupyter import JupyterShutdown
from lamplighter.remote.connection import Connection
from lamplighter.settings import Settings

__all__ = ["CommandStopper", "DryRun", "NoStop", "ProcessStopper", "build_stopper"]

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


class ProcessStopper:
    """Stops a server that has no stop API (a plain code-server) by terminating the process on its port."""

    def __init__(self, port: int, *, verify_timeout_s: float = 10.0) -> None:
        self._port = port
        self._verify_timeout_s = verify_timeout_s

    @property
    def description(self) -> str:
        return f"SIGTERM to the process listening on port {self._port}"

    async def stop(self, decision: Decision) -> StopResult:
        import psutil

        from lamplighter.signals.processes import find_listening_pid

        pid = await asyncio.to_thread(find_listening_pid, self._port)
        if pid is None:
            return StopResult(StopOutcome.STOPPED, f"nothing listens on port {self._port}")
        try:
            process = psutil.Process(pid)
            process.terminate()
            await asyncio.to_thread(process.wait, self._verify_timeout_s)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            return StopResult(
                StopOutcome.STOPPING, f"pid {pid} still runs {self._verify_timeout_s:g} s after SIGTERM"
            )
        except psutil.AccessDenied:
            return StopResult(StopOutcome.FAILED, f"not allowed to stop pid {pid}")
        return StopResult(StopOutcome.STOPPED, f"pid {pid} exited")


def build_stopper(settings: Settings, conn: Connection | None, target: str) -> Stopper:
    """The stopper for ``--action``/``--platform``/``--app-type``, wrapped in :class:`DryRun` when asked."""
    stopper: Stopper
    if settings.action == "none":
        return NoStop()
    if settings.action == "command":
        if not settings.command:
            raise ConfigError("command: --action command needs --command 'shell command'")
        stopper = CommandStopper(settings.command, target)
    elif settings.platform == "sagemaker":
        from lamplighter.platforms.sagemaker import AppIdentity, SageMakerStopper

        identity = AppIdentity.from_metadata(settings.sagemaker_metadata)
        if settings.region:
            identity = replace(identity, region=settings.region)
        stopper = SageMakerStopper(
            identity,
            endpoint_url=settings.sagemaker_endpoint_url,
            verify_timeout_s=settings.stop_verify_timeout.total_seconds(),
        )
    elif conn is not None:
        stopper = JupyterShutdown(conn, verify_timeout_s=settings.stop_verify_timeout.total_seconds())
    elif settings.editor_port:
        stopper = ProcessStopper(
            settings.editor_port, verify_timeout_s=settings.stop_verify_timeout.total_seconds()
        )
    else:
        raise ConfigError("action: nothing to stop with; give --url, --editor-port, or --action command")
    return DryRun(stopper) if settings.dry_run else stopper
