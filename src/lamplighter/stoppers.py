"""Stoppers that are not a platform's own: run a command, do nothing, pretend (dry run), or end a local process.

A platform's own stopper (``POST /api/shutdown``, ``DeleteApp``) lives with its platform under
:mod:`lamplighter.platforms`; which stopper a target gets is decided in :mod:`lamplighter.wiring`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from lamplighter.hooks import run_hook
from lamplighter.model import Decision, StopOutcome, StopResult, format_time
from lamplighter.platforms.base import Stopper

__all__ = ["CommandStopper", "DryRun", "NoStop", "ProcessStopper"]


class CommandStopper:
    """Runs a shell command to stop the app (a :mod:`hook <lamplighter.hooks>`); exit status 0 counts as
    stopped."""

    def __init__(
        self, command: str, target: str, *, timeout_s: float = 300.0, extra: Mapping[str, str] | None = None
    ) -> None:
        self._command = command
        self._target = target
        self._timeout_s = timeout_s
        self._extra = dict(extra or {})

    @property
    def description(self) -> str:
        return f"command {self._command!r}"

    async def stop(self, decision: Decision) -> StopResult:
        result = await run_hook(
            self._command, self._target, decision, timeout_s=self._timeout_s, extra=self._extra
        )
        return StopResult(StopOutcome.STOPPED if result.ok else StopOutcome.FAILED, result.detail)


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

        from lamplighter.processinfo import find_listening_pid

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
