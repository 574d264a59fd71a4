"""Reports from the in-server extension to ``lamplighter hub``: their JSON form, who may send one, and how the
service uses them instead of probing.

A report is what the extension saw at its last check: its snapshot (kernels, terminals, and the
readings only it can take inside the server: the process tree, the GPU, keep-alive files and snoozes)
and its verdict (``Decision.to_dict()``, shown on the status page). The service's agent for that
server judges the snapshot with the service's own policy (group and profile timeouts, the veto hook,
``--dry-run``), as it would judge a probe: **the service is the one stopper of every server**; an
extension that reports never stops its server itself.

While a report is fresh, the service makes no request to that server. A report is fresh for twice
the reporter's own ``interval_s`` (one lost report is forgiven) plus a second; after that the server
is probed at its own address as if it had never reported. Before a stop that rests on a report, the
service looks at the server itself once (:class:`LookBeforeStop`): a busy kernel or newer activity
there keeps the server, whatever the report said.

Who may report: the token's owner, as the hub tells it (``GET /hub/api/user`` with that token,
cached 5 minutes as jupyterhub's own ``HubAuth`` caches it), must be the server's user; a server's own token
(``JUPYTERHUB_API_TOKEN`` inside it, its scopes filtered ``!server=USER/NAME``) reports only for
that server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from lamplighter.errors import AuthRejected, RemoteError
from lamplighter.model import (
    ActivityReading,
    Clock,
    KernelInfo,
    ServerSnapshot,
    TerminalInfo,
    format_time,
    parse_timestamp,
)
from lamplighter.platforms.base import Probe
from lamplighter.remote.connection import Connection

__all__ = [
    "LookBeforeStop",
    "Report",
    "ReportBook",
    "ReportedProbe",
    "TokenOwners",
    "may_report",
    "parse_report",
    "readings_to_list",
    "snapshot_to_dict",
]

logger = logging.getLogger(__name__)

#: A started time in a report this much before the hub's own start of the server is an earlier run's.
_START_SKEW = timedelta(seconds=2)
#: The most a report body may hold (a snapshot of a server with a few hundred kernels fits well).
MAX_REPORT_BYTES = 1 << 20
#: The longest a server that reports but is not watched waits before its report asks for a list again.
_LONGEST_ASK_S = 300.0


class BadReport(ValueError):
    """A report body that is not a report (answered 400); never leaves this package."""


# -- the JSON form ---------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def snapshot_to_dict(snapshot: ServerSnapshot) -> dict[str, Any]:
    """A snapshot as the extension sends it (its ``target`` stays behind: the service names the server)."""
    return {
        "started": snapshot.started.isoformat(),
        "last_activity": snapshot.last_activity.isoformat(),
        "connections": snapshot.connections,
        "kernels": [
            {
                "id": k.id,
                "name": k.name,
                "execution_state": k.execution_state,
                "last_activity": k.last_activity.isoformat(),
                "connections": k.connections,
                "path": k.path,
            }
            for k in snapshot.kernels
        ],
        "terminals": [
            {"name": t.name, "last_activity": t.last_activity.isoformat()} for t in snapshot.terminals
        ],
        "readings": readings_to_list(snapshot.readings),
    }


def readings_to_list(readings: Iterable[ActivityReading]) -> list[dict[str, Any]]:
    """Readings as a report carries them (the snapshot's own and the extension's signals')."""
    return [
        {
            "source": r.source,
            "clock": r.clock.value,
            "at": _iso(r.at),
            "detail": r.detail,
            "active_now": r.active_now,
            "hold_until": _iso(r.hold_until),
            "ready_at": _iso(r.ready_at),
        }
        for r in readings
    ]


def _time(data: Mapping[str, Any], key: str) -> datetime:
    try:
        return parse_timestamp(data[key])
    except (KeyError, ValueError, TypeError):
        raise BadReport(f"{key}: expected an ISO timestamp") from None


def _optional_time(data: Mapping[str, Any], key: str) -> datetime | None:
    return None if data.get(key) is None else _time(data, key)


def _objects(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadReport(f"{key}: expected a list of objects")
    return items


def _snapshot_from_dict(data: Any) -> ServerSnapshot:
    if not isinstance(data, dict):
        raise BadReport("snapshot: expected an object")
    try:
        kernels = tuple(
            KernelInfo(
                id=str(k["id"]),
                name=str(k["name"]),
                execution_state=str(k["execution_state"]),
                last_activity=_time(k, "last_activity"),
                connections=int(k.get("connections") or 0),
                path=None if k.get("path") is None else str(k["path"]),
            )
            for k in _objects(data, "kernels")
        )
        terminals = tuple(
            TerminalInfo(name=str(t["name"]), last_activity=_time(t, "last_activity"))
            for t in _objects(data, "terminals")
        )
        readings = tuple(
            ActivityReading(
                source=str(r["source"]),
                clock=Clock(r["clock"]),
                at=_optional_time(r, "at"),
                detail=str(r["detail"]),
                active_now=bool(r.get("active_now")),
                hold_until=_optional_time(r, "hold_until"),
                ready_at=_optional_time(r, "ready_at"),
            )
            for r in _objects(data, "readings")
        )
        connections = int(data.get("connections") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadReport(f"snapshot: {exc}") from None
    return ServerSnapshot(
        target="",
        started=_time(data, "started"),
        last_activity=_time(data, "last_activity"),
        connections=connections,
        kernels=kernels,
        terminals=terminals,
        readings=readings,
    )


@dataclass(frozen=True)
class Report:
    """One report as the service keeps it; ``received`` is the service's monotonic clock."""

    user: str
    server_name: str
    interval_s: float
    snapshot: ServerSnapshot
    decision: Mapping[str, Any]
    received: float
    seq: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.server_name)

    @property
    def fresh_until(self) -> float:
        """Twice the reporter's own interval: one lost report is forgiven, two are not."""
        return self.received + 2 * self.interval_s + 1.0


def parse_report(body: bytes, *, received: float, seq: int) -> Report:
    """The report in a POST body, or :class:`BadReport` naming the first thing wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadReport("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadReport("the body is not a JSON object")
    user, server_name, interval = data.get("user"), data.get("server_name", ""), data.get("interval_s")
    if not isinstance(user, str) or not user or not isinstance(server_name, str):
        raise BadReport("user and server_name: expected strings")
    if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0.1 <= interval <= 86_400:
        raise BadReport("interval_s: expected seconds between 0.1 and 86400")
    decision = data.get("decision")
    if not isinstance(decision, dict) or not isinstance(decision.get("verdict"), str):
        raise BadReport("decision: expected a verdict object")
    return Report(
        user=user,
        server_name=server_name,
        interval_s=float(interval),
        snapshot=_snapshot_from_dict(data.get("snapshot")),
        decision=decision,
        received=received,
        seq=seq,
    )


# -- who may report ----------------------------------------------------------------------------


def may_report(owner: Mapping[str, Any], user: str, server_name: str) -> str | None:
    """``None`` when the token's owner (the hub's ``GET /user`` answer) may report for this server,
    else why not."""
    if owner.get("kind", "user") != "user":
        return f"a {owner.get('kind')}'s token reports for no server"
    if owner.get("name") != user:
        return f"the token is not {user}'s"
    scopes = owner.get("scopes") or ()
    servers = {str(s).split("!server=", 1)[1] for s in scopes if "!server=" in str(s)}
    if servers and f"{user}/{server_name}" not in servers:
        return f"the token is another server's ({', '.join(sorted(servers))})"
    return None


class TokenOwners:
    """Who a token belongs to, as the hub says (``GET /user`` with it); answers kept ``cache_s`` seconds,
    keyed by the token's hash (the token itself is never kept)."""

    def __init__(
        self,
        hub_url: str,
        *,
        verify_tls: bool = True,
        timeout_s: float = 10.0,
        cache_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._hub_url = hub_url
        self._verify_tls = verify_tls
        self._tls = tls  # a hub with internal SSL wants our client certificate here too
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self.lookups = 0  # hub requests made (tests, bench)

    async def owner(self, token: str) -> dict[str, Any] | None:
        """The token owner's model with its ``scopes``; ``None`` when the hub refuses the token."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        self.lookups += 1
        async with Connection(
            self._hub_url, token=token, verify_tls=self._verify_tls, timeout_s=self._timeout_s, tls=self._tls
        ) as conn:
            try:
                model = await conn.get("user")
            except AuthRejected:
                model = None
        found = model if isinstance(model, dict) else None
        if len(self._cache) > 10_000:  # many tokens at once: start afresh rather than grow
            self._cache.clear()
        self._cache[key] = (now + self._cache_s, found)
        return found


# -- the reports the service holds -----------------------------------------------------------------


class ReportBook:
    """The latest report of each server, and whom to wake when one comes or goes stale.

    ``on_unknown`` is called with the server's key for a report from a server no agent watches yet
    (just started: the fleet lists the hub again at once rather than at its next ``cull_every``); for
    one server at most after 1 s, 2 s, 4 s… up to 5 min, so a server that reports but never shows up
    ready in the hub does not make the service list the hub every second.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reports: dict[tuple[str, str], Report] = {}
        self._wake: dict[tuple[str, str], Callable[[], None]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._seq = 0
        self.received = 0
        self.on_unknown: Callable[[tuple[str, str]], None] | None = None
        self._asked: dict[tuple[str, str], tuple[float, float]] = {}  # key → (next ask, its delay)

    def now(self) -> float:
        return self._clock()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, report: Report) -> None:
        self.received += 1
        key = report.key
        self._reports[key] = report
        wake = self._wake.get(key)
        if wake is None:
            self._ask(key)
            return
        wake()
        # Woken again when it turns stale, so that probing resumes then and not at the next deadline.
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(report.fresh_until - self._clock(), 0.0) + 0.05
        self._timers[key] = asyncio.get_running_loop().call_later(delay, wake)

    def _ask(self, key: tuple[str, str]) -> None:
        now = self._clock()
        next_at, delay = self._asked.get(key, (now, 0.5))
        if self.on_unknown is None or now < next_at:
            return
        delay = min(delay * 2, _LONGEST_ASK_S)
        if len(self._asked) > 10_000:
            self._asked.clear()
        self._asked[key] = (now + delay, delay)
        self.on_unknown(key)

    def fresh(self, key: tuple[str, str]) -> Report | None:
        report = self._reports.get(key)
        return report if report is not None and report.fresh_until > self._clock() else None

    def listen(self, key: tuple[str, str], wake: Callable[[], None]) -> None:
        self._wake[key] = wake
        self._asked.pop(key, None)

    def forget(self, key: tuple[str, str]) -> None:
        self._wake.pop(key, None)
        self._reports.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()


class ReportedProbe:
    """A hub server's probe: its fresh report when there is one (no request to the server), else a
    direct probe at its own address. The inner probe of :class:`~lamplighter.platforms.jupyterhub.HubServerProbe`."""

    def __init__(
        self,
        direct: Probe,
        book: ReportBook,
        key: tuple[str, str],
        *,
        target: str,
        started: datetime | None,
    ) -> None:
        self._direct = direct
        self._book = book
        self._key = key
        self._target = target
        self._started = started
        self.last: Report | None = None  # the report the latest snapshot came from; None: probed
        self.direct_probes = 0
        self.reported = 0

    @property
    def target(self) -> str:
        return self._target

    def current(self) -> Report | None:
        """The fresh report of this run of the server (an earlier run's report is not this one's)."""
        report = self._book.fresh(self._key)
        if report is None:
            return None
        if self._started is not None and report.snapshot.started < self._started - _START_SKEW:
            return None
        return report

    async def snapshot(self) -> ServerSnapshot:
        report = self.current()
        self.last = report
        if report is None:
            self.direct_probes += 1
            return await self._direct.snapshot()
        self.reported += 1
        return replace(report.snapshot, target=self._target)

    async def look(self) -> ServerSnapshot:
        """One direct probe, whatever the reports (the look before a stop)."""
        self.direct_probes += 1
        return await self._direct.snapshot()

    async def cull_kernel(self, kernel_id: str) -> None:
        await self._direct.cull_kernel(kernel_id)

    async def cull_terminal(self, name: str) -> None:
        await self._direct.cull_terminal(name)


class LookBeforeStop:
    """The service's own look at a reporting server before a stop: a work signal the agent refreshes
    only before acting on a STOP (``Agent.assess``). Its reading holds for the report it was taken
    for; a newer report or a direct probe supersedes it."""

    name = "look before stop"

    def __init__(self, probe: ReportedProbe) -> None:
        self._probe = probe
        self._for: int | None = None
        self._reading: ActivityReading | None = None

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to sample in the background

    async def refresh(self) -> None:
        report = self._probe.last
        self._reading, self._for = None, None
        if report is None:
            return  # the decision rests on a direct probe already
        try:
            snapshot = await self._probe.look()
        except RemoteError as exc:
            # The scalable path is also for services that cannot reach the servers: the report stands.
            logger.debug("%s: no look before the stop: %s", self._probe.target, exc)
            return
        self._reading, self._for = _look_reading(snapshot), report.seq

    def reading(self, now: datetime) -> ActivityReading:
        last = self._probe.last
        if self._reading is not None and last is not None and last.seq == self._for:
            return self._reading
        return ActivityReading(self.name, Clock.WORK, None, "no look taken")


def _look_reading(snapshot: ServerSnapshot) -> ActivityReading | None:
    busy = [k for k in snapshot.kernels if k.execution_state not in ("idle", "dead")]
    if busy:
        return ActivityReading(
            LookBeforeStop.name,
            Clock.WORK,
            None,
            f"{busy[0].label} {busy[0].execution_state} when the service looked before the stop",
            active_now=True,
        )
    moments = [k.last_activity for k in snapshot.kernels] + [t.last_activity for t in snapshot.terminals]
    if not moments:
        return None
    latest = max(moments)
    return ActivityReading(
        LookBeforeStop.name,
        Clock.INTERACTION,
        latest,
        f"the server itself, looked at before the stop: latest kernel or terminal activity {format_time(latest)}",
    )
