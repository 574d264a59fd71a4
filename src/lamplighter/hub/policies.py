"""What the hub service adds to the one policy: per-group and per-profile idle timeouts, and the veto hook.

The verdict itself is :func:`lamplighter.policy.decide`, unchanged: a group or profile only picks the
``idle_timeout`` a server is judged by, and the veto hook only gets a last word before a stop.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from lamplighter.errors import ConfigError
from lamplighter.model import Decision, StopOutcome, StopResult
from lamplighter.platforms.base import Stopper
from lamplighter.platforms.jupyterhub import HubServer
from lamplighter.settings import parse_setting

__all__ = ["VetoHook", "VetoStop", "idle_timeout_for", "load_veto_hook", "parse_timeouts"]

logger = logging.getLogger(__name__)

VetoHook = Callable[[Mapping[str, Any], Mapping[str, Any], Decision], Any]


def parse_timeouts(entries: tuple[str, ...], setting: str) -> dict[str, timedelta]:
    """``("gpu=15m", "students=2h")`` → ``{"gpu": 15 min, "students": 2 h}``; a bad entry is a ConfigError."""
    found: dict[str, timedelta] = {}
    for entry in entries:
        name, sep, duration = entry.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{setting}: expected NAME=DURATION entries like 'gpu=15m', got {entry!r}")
        found[name.strip()] = parse_setting("idle_timeout", duration.strip(), setting)
    return found


def idle_timeout_for(
    server: HubServer, default: timedelta, groups: Mapping[str, timedelta], profiles: Mapping[str, timedelta]
) -> tuple[timedelta, str | None]:
    """The shortest timeout that applies to the server, and what it comes from (``None``: the default)."""
    candidates: list[tuple[timedelta, str | None]] = [(default, None)]
    candidates += [(groups[g], f"group {g}") for g in server.user_groups if g in groups]
    profile = server.user_options.get("profile")
    if isinstance(profile, str) and profile in profiles:
        candidates.append((profiles[profile], f"profile {profile}"))
    return min(candidates, key=lambda c: c[0])


def load_veto_hook(spec: str) -> VetoHook:
    """``module:function`` imported once at start; a wrong name is a ConfigError (exit 2)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"veto_hook: expected 'module:function', got {spec!r}")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"veto_hook: cannot load {spec!r} ({type(exc).__name__}: {exc})") from None
    if not callable(hook):
        raise ConfigError(f"veto_hook: {spec!r} is not callable")
    return hook  # type: ignore[no-any-return]


class VetoStop:
    """Asks the veto hook before the real stop; a 'keep' is SKIPPED (journaled once per verdict: new
    activity, and so a new deadline, asks the hook again)."""

    def __init__(self, real: Stopper, hook: VetoHook, server: HubServer) -> None:
        self._real = real
        self._hook = hook
        self._server = server

    @property
    def description(self) -> str:
        return self._real.description

    async def stop(self, decision: Decision) -> StopResult:
        try:
            answer = self._hook(self._server.server_model, self._server.user_model, decision)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            # A broken hook never stops a server it was meant to judge.
            logger.exception("veto hook failed for %s", self._server.label)
            return StopResult(StopOutcome.FAILED, f"veto hook failed: {type(exc).__name__}: {exc}")
        if answer in (False, "keep"):
            return StopResult(StopOutcome.SKIPPED, f"the veto hook keeps {self._server.label}")
        if answer not in (True, "stop"):
            return StopResult(StopOutcome.FAILED, f"veto hook answered {answer!r}, not 'keep' or 'stop'")
        return await self._real.stop(decision)
