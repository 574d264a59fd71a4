"""A plain Jupyter server: the probe (REST, untracked, never a websocket) and the shutdown stopper.

This is the probe every Jupyter-based target uses (a VM, a laptop, a JupyterHub user's server, a
SageMaker Studio JupyterLab app); only the stopper differs between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from lamplighter.errors import (
    AuthRejected,
    ConnectFailed,
    MalformedAnswer,
    NotFound,
    RemoteError,
    RemoteTimeout,
)
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
from lamplighter.retry import Backoff, attempts

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
        except NotFound:
            return []

    async def cull_kernel(self, kernel_id: str) -> None:
        await self._delete(f"api/kernels/{kernel_id}")

    async def cull_terminal(self, name: str) -> None:
        await self._delete(f"api/terminals/{name}")

    async def _delete(self, path: str) -> None:
        with contextlib.suppress(NotFound):  # already gone is done
            await self._conn.request("DELETE", path)


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


# Answers that come from a proxy or hub in front of a server that is no longer there, never from a
# Jupyter server's own /api/status: 404 (the proxy has no route any more and no default target), 424
# (JupyterHub: "the user's server is not running"), 502/503 (the proxy cannot reach its target).
_GONE_STATUSES = frozenset({404, 424, 502, 503})


class JupyterShutdown:
    """Stops the server with ``POST /api/shutdown`` and verifies, with bounded backoff, that it is gone.

    Gone is a refused or dropped connection (the server itself is gone), or an answer from whatever
    stands in front of it: 404, 424, 502 or 503 from a proxy or a hub. A 401, 403 or login redirect
    counts as gone too: the same credentials were accepted by the probe moments before, and a Jupyter
    server does not change its auth while it shuts down, so the refusal comes from the hub, which
    answers once the proxy's route to the stopped server is gone. Only a server that answers
    ``api/status`` after refusing our POST has refused the stop (FAILED); one that still answers after
    ``verify_timeout_s`` is STOPPING, which the agent looks at again later.

    Verification polls quickly at first (a server exits within a second or two) and backs off to one
    request every ``longest_delay_s``: about 15 requests in the default 30 s, not one every 50 ms.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        verify_timeout_s: float = 30.0,
        first_delay_s: float = 0.1,
        longest_delay_s: float = 3.0,
    ) -> None:
        self._conn = conn
        self._verify_timeout_s = verify_timeout_s
        self._first_delay_s = first_delay_s
        self._longest_delay_s = longest_delay_s

    @property
    def description(self) -> str:
        return f"POST {self._conn.display_url}api/shutdown"

    async def stop(self, decision: Decision) -> StopResult:
        refusal: AuthRejected | None = None
        try:
            await self._conn.request("POST", "api/shutdown")
        except (ConnectFailed, RemoteTimeout):
            # jupyter_server stops its loop before it answers: a dropped (or unanswered) POST is the
            # shutdown under way, not a failure. The verification says how it ended.
            pass
        except AuthRejected as exc:
            refusal = exc  # refused by the server, or answered by a hub for a server already gone
        except RemoteError as exc:
            if exc.status not in _GONE_STATUSES:
                return StopResult(StopOutcome.FAILED, str(exc))
            # A proxy answered: the server dropped our POST while stopping, or is gone already (another
            # agent stopped it first).
            logger.debug("shutdown answered by the proxy: %s", exc)
        return await self._verify(refusal)

    async def _verify(self, refusal: AuthRejected | None) -> StopResult:
        backoff = Backoff(self._first_delay_s, self._longest_delay_s)
        async for attempt in attempts(backoff, timeout_s=self._verify_timeout_s):
            checks = attempt.number
            try:
                await self._conn.get("api/status")
            except ConnectFailed:
                return StopResult(StopOutcome.STOPPED, f"the server stopped answering (check {checks})")
            except AuthRejected as exc:
                return StopResult(
                    StopOutcome.STOPPED,
                    f"the hub in front refuses with HTTP {exc.status} for a server that is gone (check {checks})",
                )
            except RemoteError as exc:
                if exc.status in _GONE_STATUSES:
                    return StopResult(
                        StopOutcome.STOPPED,
                        f"the proxy in front answers HTTP {exc.status}: the server is gone (check {checks})",
                    )
                logger.debug("still stopping: %s", exc)
            else:
                if refusal is not None:
                    return StopResult(StopOutcome.FAILED, str(refusal))
        return StopResult(
            StopOutcome.STOPPING,
            f"shutdown accepted but still answering after {self._verify_timeout_s:g} s",
        )
