"""Stoppers that are not a platform's own: run a command, do nothing, or pretend (dry run).

``build_stopper`` picks the stopper the settings ask for; it is the one place that maps
``--action`` and ``--platform`` onto an implementation.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import replace

from lamplighter.errors import ConfigError
from lamplighter.model import Decision, StopOutcome, StopResult, format_time
from lamplighter.platforms.base import Stopper
from lamplighter.platforms.jupyter import JupyterShutdown
from lamplighter.redaction import redact, without_secrets
from lamplighter.remote.connection import Connection
from lamplighter.settings import Settings, secret_variables

# Every variable a secret setting is read from, so a secret added to settings is never inherited.
_SECRET_SETTING_VARIABLES = secret_variables()

__all__ = ["CommandStopper", "DryRun", "NoStop", "ProcessStopper", "build_stopper", "hook_environment"]

_OUTPUT_TAIL = 500


class CommandStopper:
    """Runs a shell command to stop the app; exit status 0 counts as stopped.

    The command gets :func:`hook_environment`: the inherited environment without secrets, plus
    ``LAMPLIGHTER_TARGET``, ``LAMPLIGHTER_REASON``, ``LAMPLIGHTER_REASONS`` (one per line),
    ``LAMPLIGHTER_IDLE_SINCE`` and ``LAMPLIGHTER_STOP_AT`` (ISO-8601 UTC, empty when unknown).
    """

    def __init__(self, command: str, target: str, *, timeout_s: float = 300.0) -> None:
        self._command = command
        self._target = target
        self._timeout_s = timeout_s

    @property
    def description(self) -> str:
        return f"command {self._command!r}"

    async def stop(self, decision: Decision) -> StopResult:
        env = hook_environment(self._target, decision)
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
        # The tail is journaled and logged: a hook that prints a secret must not leak it there.
        tail = redact(output.decode(errors="replace")[-_OUTPUT_TAIL:].strip())
        if process.returncode == 0:
            return StopResult(StopOutcome.STOPPED, "the command exited 0" + (f": {tail}" if tail else ""))
        return StopResult(
            StopOutcome.FAILED, f"the command exited {process.returncode}" + (f": {tail}" if tail else "")
        )


def hook_environment(
    target: str, decision: Decision, *, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a hook (``--command``, ``--warn-command``): minimal and without secrets.

    The inherited environment (``os.environ``) loses every secret setting's variables and any variable
    holding a registered secret (:func:`lamplighter.redaction.without_secrets`); then come the five
    ``LAMPLIGHTER_*`` variables that describe the verdict, redacted like every other output.
    """
    env = without_secrets(os.environ if inherited is None else inherited, also=_SECRET_SETTING_VARIABLES)
    env.update(
        LAMPLIGHTER_TARGET=redact(target),
        LAMPLIGHTER_REASON=redact(decision.reason),
        LAMPLIGHTER_REASONS=redact("\n".join(decision.reasons)),
        LAMPLIGHTER_IDLE_SINCE=decision.idle_since.isoformat() if decision.idle_since else "",
        LAMPLIGHTER_STOP_AT=decision.stop_at.isoformat() if decision.stop_at else "",
    )
    return env


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
        from lamplighter.platforms.sagemaker import SageMakerStopper
        from lamplighter.sagemaker.identity import AppIdentity

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
