"""A plain Jupyter server: the probe (REST, untracked, never a websocket) and the shutdown stopper.

This is the probe every Jupyter-based target uses (a VM, a laptop, a JupyterHub user's server, a
SageMaker Studio JupyterLab app); only the stopper differs between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from lamplighter.errors import ConnectFailed, MalformedAnswer, RemoteError
from lamplighter.model import (
    Decision,
    KernelInfo,
    ServerSnapshot,
    StopOutcome,
    StopResult,
    TerminalInfo,
    parse_timestamp,
)
from lamplighter.remote.connection import Connection

__all__ = ["JupyterServer", "JupyterShutdown", "parse_snapshot"]

logger = logging.getLogger(__name__)

#: How far ahead of the probe a server's timestamp may be: clocks drift by seconds, and a naive local
#: time read as UTC by hours; a day past that the answer is broken.
FUTURE_SKEW = timedelta(days=1)


def _wall_clock() -> datetime:
    """When the probe's answers arrived: only to bound the server's timestamps, never for a verdict."""
    return datetime.now(timezone.utc)


class JupyterServer:
    """Observes a Jupyter server through ``/api/status``, ``/api/kernels``, ``/api/terminals``, ``/api/sessions``."""

    def __init__(self, conn: Connection, *, clock: Callable[[], datetime] = _wall_clock) -> None:
        self._conn = conn
        self._clock = clock

    @property
    def target(self) -> str:
        return self._conn.display_url

    async def snapshot(self) -> ServerSnapshot:
        status, kernels, terminals, sessions = await asyncio.gather(
            self._conn.get("api/status"),
            self._conn.get("api/kernels"),
            self._optional("api/terminals"),
            self._optional("api/sessions"),
        )
        return parse_snapshot(self.target, status, kernels, terminals, sessions, received_at=self._clock())

    async def _optional(self, path: str) -> Any:
        """Terminals and sessions are extensions: a server without them answers 404, which means none."""
        try:
            return await self._conn.get(path)
        except RemoteError as exc:
            if exc.status == 404:
                return []
            raise

    async def cull_kernel(self, kernel_id: str) -> None:
        await self._delete(f"api/kernels/{kernel_id}")

    async def cull_terminal(self, name: str) -> None:
        await self._delete(f"api/terminals/{name}")

    async def _delete(self, path: str) -> None:
        try:
            await self._conn.request("DELETE", path)
        except RemoteError as exc:
            if exc.status != 404:  # already gone is done
                raise


def parse_snapshot(
    target: str,
    status: Any,
    kernels: Any,
    terminals: Any,
    sessions: Any,
    *,
    received_at: datetime | None = None,
) -> ServerSnapshot:
    """Turn the four API answers into a snapshot; anything off-shape raises ``MalformedAnswer``.

    A malformed item fails the whole probe rather than being skipped: a skipped busy kernel could
    make a working app look idle. Timestamps must lie in :func:`~lamplighter.model.parse_timestamp`'s
    range and, given ``received_at`` (when the answers came), at most :data:`FUTURE_SKEW` after it.
    """
    try:
        paths: dict[str, str] = {}
        for session in _as_list(sessions, "api/sessions"):
            kernel = session.get("kernel") or {}
            if isinstance(kernel, dict) and kernel.get("id") and session.get("path"):
                paths[str(kernel["id"])] = str(session["path"])
        kernel_infos = tuple(
            KernelInfo(
                id=str(k["id"]),
                name=str(k.get("name", "?")),
                execution_state=str(k.get("execution_state", "unknown")),
                last_activity=_timestamp(k, "last_activity", f"kernel {k['id']}"),
                connections=int(k.get("connections", 0)),
                path=paths.get(str(k["id"])),
            )
            for k in _as_list(kernels, "api/kernels")
        )
        terminal_infos = tuple(
            TerminalInfo(
                name=str(t["name"]), last_activity=_timestamp(t, "last_activity", f"terminal {t['name']}")
            )
            # Old servers' terminal models lack last_activity: that is malformed for us, not "idle".
            for t in _as_list(terminals, "api/terminals")
        )
        if not isinstance(status, dict):
            raise TypeError("api/status is not an object")
        snapshot = ServerSnapshot(
            target=target,
            started=_timestamp(status, "started", "api/status"),
            last_activity=_timestamp(status, "last_activity", "api/status"),
            connections=int(status.get("connections", 0)),
            kernels=kernel_infos,
            terminals=terminal_infos,
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise MalformedAnswer(
            f"{target}: unexpected answer from the Jupyter API ({type(exc).__name__}: {_short(exc)})"
        ) from exc
    if received_at is not None:
        _check_not_future(snapshot, received_at + FUTURE_SKEW)
    return snapshot


def _timestamp(item: dict[str, Any], key: str, what: str) -> datetime:
    """``item[key]`` as a timestamp; a bad one names itself (``kernel 3f2a last_activity: ...``)."""
    try:
        return parse_timestamp(item[key])
    except ValueError as exc:
        raise ValueError(f"{str(what)[:60]} {key}: {exc}") from None


def _check_not_future(snapshot: ServerSnapshot, latest: datetime) -> None:
    """A time far ahead of the probe is a broken answer; believed, it would hold the app up until then."""
    moments = [("api/status started", snapshot.started), ("api/status last_activity", snapshot.last_activity)]
    moments += [(f"{k.label} last_activity", k.last_activity) for k in snapshot.kernels]
    moments += [(f"{t.label} last_activity", t.last_activity) for t in snapshot.terminals]
    for what, moment in moments:
        if moment > latest:
            raise MalformedAnswer(
                f"{snapshot.target}: {what} {moment.isoformat()} is in the future "
                f"(more than {FUTURE_SKEW.days} day after the probe); is the server's clock right?"
            )


def _short(exc: BaseException) -> str:
    """An error's text cut to 200 characters: the rest of a hostile answer does not belong in one line."""
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _as_list(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError(f"{what} is not a list of objects")
    return value


class JupyterShutdown:
    """Stops the server with ``POST /api/shutdown`` and waits until it no longer answers."""

    def __init__(self, conn: Connection, *, verify_timeout_s: float = 30.0) -> None:
        self._conn = conn
        self._verify_timeout_s = verify_timeout_s

    @property
    def description(self) -> str:
        return f"POST {self._conn.display_url}api/shutdown"

    async def stop(self, decision: Decision) -> StopResult:
        try:
            await self._conn.request("POST", "api/shutdown")
        except ConnectFailed:
            # The server may close the connection before answering: that is the shutdown happening.
            pass
        except RemoteError as exc:
            return StopResult(StopOutcome.FAILED, str(exc))
        deadline = time.monotonic() + self._verify_timeout_s
        while True:
            try:
                await self._conn.get("api/status")
            except ConnectFailed:
                return StopResult(StopOutcome.STOPPED, "the server stopped answering")
            except RemoteError as exc:
                logger.debug("still stopping: %s", exc)
            if time.monotonic() >= deadline:
                return StopResult(
                    StopOutcome.STOPPING,
                    f"shutdown accepted but still answering after {self._verify_timeout_s:g} s",
                )
            await asyncio.sleep(0.05)
