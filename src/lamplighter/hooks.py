"""Hooks: the shell commands a user gives lamplighter (``--command`` to stop, ``--warn-command`` to warn).

Both run the same way: a shell, no stdin, a bounded time, the tail of their output redacted, and
:func:`hook_environment` — the inherited environment without secrets, plus five ``LAMPLIGHTER_*``
variables that describe the verdict.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lamplighter.model import Decision
from lamplighter.redaction import redact, without_secrets
from lamplighter.settings import secret_variables

__all__ = ["HookResult", "hook_environment", "run_hook"]

# Every variable a secret setting is read from, so a secret added to settings is never inherited.
_SECRET_SETTING_VARIABLES = secret_variables()
_OUTPUT_TAIL = 500


@dataclass(frozen=True)
class HookResult:
    ok: bool
    """The command ran and exited 0."""
    detail: str
    """What happened, one line for the journal and the log (output tail redacted)."""


async def run_hook(
    command: str,
    target: str,
    decision: Decision,
    *,
    timeout_s: float,
    extra: Mapping[str, str] | None = None,
) -> HookResult:
    """Run ``command`` in a shell with :func:`hook_environment` (plus ``extra``, e.g. the hub service's
    ``LAMPLIGHTER_HUB_*``); never raises for the command's failure."""
    env = hook_environment(target, decision)
    env.update({name: redact(value) for name, value in (extra or {}).items()})
    try:
        process = await asyncio.create_subprocess_shell(
            command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return HookResult(False, f"cannot run the command: {exc.strerror}")
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return HookResult(False, f"the command did not finish within {timeout_s:g} s")
    # The tail is journaled and logged: a hook that prints a secret must not leak it there.
    tail = redact(output.decode(errors="replace")[-_OUTPUT_TAIL:].strip())
    detail = f"the command exited {process.returncode}" + (f": {tail}" if tail else "")
    return HookResult(process.returncode == 0, detail)


def hook_environment(
    target: str, decision: Decision, *, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a hook: minimal and without secrets.

    The inherited environment (``os.environ``) loses every secret setting's variables and any variable
    holding a registered secret (:func:`lamplighter.redaction.without_secrets`); then come
    ``LAMPLIGHTER_TARGET``, ``LAMPLIGHTER_REASON``, ``LAMPLIGHTER_REASONS`` (one per line),
    ``LAMPLIGHTER_IDLE_SINCE`` and ``LAMPLIGHTER_STOP_AT`` (ISO-8601 UTC, empty when unknown), redacted
    like every other output.
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
