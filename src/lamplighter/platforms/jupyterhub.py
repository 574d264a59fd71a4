"""JupyterHub: its REST API (users and their ready servers, the routing table) and the stop through the hub.

A hub user's server is a plain Jupyter server, so it is probed with :class:`~lamplighter.platforms.jupyter.
JupyterServer`, at its own address: a request through configurable-http-proxy moves the route's
``last_activity``, which the hub reads as the user's activity, so a probe there would keep every server
alive. The address comes from the hub's routing table (``GET /hub/api/proxy``, scope ``proxy``). The
hub's own ``last_activity`` for the server joins the verdict as one more interaction reading.

The stop goes through the hub (``DELETE /users/{name}/server`` or ``/servers/{server_name}``), so the
user sees "Server not running" at once rather than the proxy's "503 Your server appears to be down"
until the hub notices. A 202 means the hub is still stopping it; the stop is verified by reading the
user's model until the server is no longer there (:func:`~lamplighter.retry.attempts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from lamplighter.errors import AuthRejected, MalformedAnswer, NotFound, RemoteError
from lamplighter.model import (
    ActivityReading,
    Clock,
    Decision,
    ServerSnapshot,
    StopOutcome,
    StopResult,
    format_time,
    parse_timestamp,
)
from lamplighter.platforms.base import Probe
from lamplighter.remote.connection import Connection
from lamplighter.retry import Backoff, attempts

__all__ = [
    "HubApi",
    "HubServer",
    "HubServerProbe",
    "HubStop",
    "HubStopper",
    "own_base_url",
    "parse_users",
    "server_from_env_or_url",
]

logger = logging.getLogger(__name__)

#: The hub answers a paginated model only when asked with this media type (JupyterHub >= 2).
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"


@dataclass(frozen=True)
class HubServer:
    """One ready server of one user as the hub sees it (its own address comes from the routing table)."""

    user: str
    name: str  # "" for the user's default server
    path: str  # the proxy path, e.g. /user/alice/ or /user/alice/gpu/
    started: datetime | None
    last_activity: datetime | None
    user_admin: bool = False
    user_groups: tuple[str, ...] = ()
    user_options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    server_model: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    user_model: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # without servers

    @property
    def label(self) -> str:
        """``alice`` or ``alice/gpu``: how the hub's own log names the server."""
        return f"{self.user}/{self.name}" if self.name else self.user

    @property
    def api_path(self) -> str:
        """The server's path in the hub's REST API."""
        user = quote(self.user, safe="")
        return f"users/{user}/servers/{quote(self.name, safe='')}" if self.name else f"users/{user}/server"


def _optional_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise MalformedAnswer(f"the hub's {what}: {exc}") from None


def parse_users(users: Any) -> list[HubServer]:
    """The ready servers in a list of hub user models; a pending server (starting or stopping) is left out."""
    if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
        raise MalformedAnswer("the hub's users answer is not a list of objects")
    found: list[HubServer] = []
    for user in users:
        # Absent without read:servers; present, it must be an object (an empty list is off-shape too).
        servers = user.get("servers")
        servers = {} if servers is None else servers
        if not isinstance(servers, dict) or "name" not in user:
            raise MalformedAnswer("a hub user model without a name or with servers that are not an object")
        for name, server in servers.items():
            if not isinstance(server, dict):
                raise MalformedAnswer(f"the hub's server model for {user['name']}/{name} is not an object")
            # The culler's rule: a pending server is mid-spawn or mid-stop, never ours to judge.
            if server.get("pending") or not server.get("ready"):
                continue
            found.append(
                HubServer(
                    user=str(user["name"]),
                    name=str(name),
                    path=str(server.get("url") or ""),
                    started=_optional_time(server.get("started"), f"started of {user['name']}/{name}"),
                    last_activity=_optional_time(
                        server.get("last_activity"), f"last_activity of {user['name']}/{name}"
                    ),
                    user_admin=bool(user.get("admin")),
                    user_groups=tuple(str(g) for g in user.get("groups") or ()),
                    user_options=dict(server.get("user_options") or {}),
                    server_model=dict(server),
                    user_model={k: v for k, v in user.items() if k != "servers"},
                )
            )
    return found


class HubApi:
    """The slice of the hub's REST API lamplighter uses, over one :class:`Connection` with the service token."""

    def __init__(self, conn: Connection, *, page_size: int | None = None) -> None:
        self._conn = conn
        self._page_size = page_size
        self.requests = 0  # for bench/ and the tests: hub API calls made

    @property
    def display_url(self) -> str:
        return self._conn.display_url

    async def _get(self, path: str, **kwargs: Any) -> Any:
        self.requests += 1
        return await self._conn.get(path, **kwargs)

    async def check_access(self) -> None:
        """Fail at start, naming the scope, when the token cannot list users or read the routing table."""
        for path, params, scope in (
            ("users", {"state": "ready", "limit": "1"}, "list:users"),
            ("proxy", {"limit": "1"}, "proxy"),
        ):
            try:
                await self._get(path, params=params)
            except AuthRejected as exc:
                raise AuthRejected(
                    f"{exc} (the service's role needs the scope {scope!r}; see lamplighter hub --help)",
                    status=exc.status,
                ) from exc

    async def list_ready(self) -> list[HubServer]:
        """Every ready server, page by page (``state=ready`` filtered by the hub; JupyterHub >= 1.3)."""
        servers: list[HubServer] = []
        async for users in self._pages("users", {"state": "ready"}):
            servers += parse_users(users)
        return servers

    async def _pages(self, path: str, params: dict[str, str]) -> AsyncIterator[Any]:
        offset = 0
        while True:
            query = dict(params, offset=str(offset))
            if self._page_size:
                query["limit"] = str(self._page_size)
            answer = await self._get(path, params=query, headers={"Accept": PAGINATION_MEDIA_TYPE})
            if not (isinstance(answer, dict) and "_pagination" in answer and "items" in answer):
                yield answer  # a hub without pagination (< 2.0) sends everything at once
                return
            items = answer["items"]
            if not isinstance(items, list | dict):
                raise MalformedAnswer(
                    f"GET {self.display_url}{path}: the page's items are neither a list nor an object"
                )
            yield items
            following = (answer.get("_pagination") or {}).get("next")
            if not following or not items:
                return
            offset = int(following.get("offset", offset + len(items)))

    async def route_targets(self) -> dict[tuple[str, str], str]:
        """``(user, server name) → the server's own base URL`` from the hub's routing table (scope ``proxy``)."""
        # Paginated like the users (the hub cuts the table at its page size even when not asked to page).
        routes: dict[str, Any] = {}
        async for page in self._pages("proxy", {}):
            if not isinstance(page, dict):
                raise MalformedAnswer(f"GET {self.display_url}proxy: the routing table is not an object")
            routes.update(page)
        targets: dict[tuple[str, str], str] = {}
        for spec, route in routes.items():
            data = route.get("data") if isinstance(route, dict) else None
            if not isinstance(data, dict) or "user" not in data or not route.get("target"):
                continue  # the hub's own route, a service's
            # The server serves under its proxy path (its base_url); a subdomain hub's spec has a host.
            path = "/" + str(spec).partition("/")[2] if not str(spec).startswith("/") else str(spec)
            targets[(str(data["user"]), str(data.get("server_name") or ""))] = (
                str(route["target"]).rstrip("/") + path
            )
        return targets

    async def server_model(self, server: HubServer) -> dict[str, Any] | None:
        """The hub's model of the server now; ``None`` once the hub no longer has it running."""
        try:
            user = await self._get(f"users/{quote(server.user, safe='')}")
        except NotFound:
            return None
        servers = user.get("servers") if isinstance(user, dict) else None
        model = (servers or {}).get(server.name)
        return model if isinstance(model, dict) else None

    async def list_inactive_users(self) -> list[dict[str, Any]]:
        """Every user with no server running (``state=inactive``; JupyterHub >= 1.3), page by page."""
        users: list[dict[str, Any]] = []
        async for page in self._pages("users", {"state": "inactive"}):
            if not isinstance(page, list) or not all(isinstance(u, dict) and "name" in u for u in page):
                raise MalformedAnswer("the hub's users answer is not a list of named objects")
            users += page
        return users

    async def user_model(self, name: str) -> dict[str, Any]:
        """The user's model now (with its servers); :class:`NotFound` once the user is gone."""
        model = await self._get(f"users/{quote(name, safe='')}")
        if not isinstance(model, dict) or "name" not in model:
            raise MalformedAnswer(f"the hub's model of user {name!r} is not a named object")
        return model

    async def delete_user(self, name: str) -> None:
        """``DELETE /users/{name}`` (scope ``admin:users``); the hub would stop running servers first."""
        self.requests += 1
        await self._conn.request("DELETE", f"users/{quote(name, safe='')}")

    async def delete(self, server: HubServer, *, remove: bool) -> None:
        self.requests += 1
        body = {"remove": True} if remove and server.name else None
        await self._conn.request("DELETE", server.api_path, json_body=body)


class HubServerProbe:
    """A hub user's server probed at its own address, with the hub's ``last_activity`` as one more reading.

    ``latest`` is the hub's model from the fleet's most recent list, replaced by :meth:`update`; a
    semaphore shared by the fleet bounds the requests in flight across every server.
    """

    def __init__(self, inner: Probe, server: HubServer, limit: asyncio.Semaphore, *, target: str) -> None:
        self._inner = inner
        self.latest = server
        self._limit = limit
        self._target = target

    @property
    def target(self) -> str:
        return self._target

    def update(self, server: HubServer) -> None:
        self.latest = server

    async def snapshot(self) -> ServerSnapshot:
        async with self._limit:
            snapshot = await self._inner.snapshot()
        at = self.latest.last_activity
        if at is None:
            return snapshot
        reading = ActivityReading(
            source="hub",
            clock=Clock.INTERACTION,
            at=at,
            detail=f"the hub's last_activity for {self.latest.label}: {format_time(at)}",
        )
        return ServerSnapshot(
            target=self._target,
            started=snapshot.started,
            last_activity=snapshot.last_activity,
            connections=snapshot.connections,
            kernels=snapshot.kernels,
            terminals=snapshot.terminals,
            readings=(*snapshot.readings, reading),
        )

    async def cull_kernel(self, kernel_id: str) -> None:
        async with self._limit:
            await self._inner.cull_kernel(kernel_id)

    async def cull_terminal(self, name: str) -> None:
        async with self._limit:
            await self._inner.cull_terminal(name)


class HubStopper:
    """Stops a hub user's server through the hub and verifies that the hub no longer runs it.

    A refusal (403: the token lacks ``delete:servers``; 400: the hub will not) is FAILED, and the next
    try waits out a backoff that doubles up to ``longest_retry_s``: the hub is not asked again in a
    loop. A server still there after ``verify_timeout_s`` (the hub answered 202 and is still stopping
    it) is STOPPING, which the agent looks at again later. A hub that cannot be reached (or answers
    5xx) is asked again at every check; only the first failure of such an outage is journaled.
    """

    def __init__(
        self,
        api: HubApi,
        server: HubServer,
        *,
        remove: bool = False,
        verify_timeout_s: float = 30.0,
        limit: asyncio.Semaphore | None = None,
        first_retry_s: float = 5.0,
        longest_retry_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._server = server
        self._remove = remove
        self._verify_timeout_s = verify_timeout_s
        self._limit = limit or asyncio.Semaphore(1)
        self._retry = Backoff(first_retry_s, longest_retry_s)
        self._retry_delays = self._retry.delays()
        self._not_before: float | None = None
        self._unreachable = False  # the last try could not reach the hub (journaled already)
        self._clock = clock

    @property
    def description(self) -> str:
        remove = " (remove)" if self._remove and self._server.name else ""
        return f"DELETE {self._api.display_url}{self._server.api_path}{remove}"

    async def stop(self, decision: Decision) -> StopResult:
        now = self._clock()
        if self._not_before is not None and now < self._not_before:
            return StopResult(
                StopOutcome.FAILED,
                f"the hub refused the last stop of {self._server.label}; next try in "
                f"{self._not_before - now:.0f} s",
                again=True,
            )
        try:
            async with self._limit:
                await self._api.delete(self._server, remove=self._remove)
        except NotFound:
            pass  # the user or the server is gone already: verified below like any other stop
        except RemoteError as exc:
            if exc.status is None or exc.status >= 500:
                # The hub away or failing (a restart): asked again at every check, so the stop is on
                # time once it is back, but journaled once per outage, not at every busy recheck.
                again, self._unreachable = self._unreachable, True
                return StopResult(StopOutcome.FAILED, str(exc), again=again)
            self._unreachable = False
            delay = next(self._retry_delays)
            self._not_before = self._clock() + delay
            logger.warning("hub refused to stop %s (next try in %.0f s): %s", self._server.label, delay, exc)
            return StopResult(StopOutcome.FAILED, f"{exc} (next try in {delay:.0f} s)")
        self._retry_delays = self._retry.delays()
        self._not_before = None
        self._unreachable = False
        return await self._verify()

    async def _verify(self) -> StopResult:
        async for attempt in attempts(Backoff(0.1, 2.0), timeout_s=self._verify_timeout_s):
            with contextlib.suppress(RemoteError):
                async with self._limit:
                    model = await self._api.server_model(self._server)
                if model is None or model.get("stopped") or not (model.get("ready") or model.get("pending")):
                    return StopResult(
                        StopOutcome.STOPPED,
                        f"the hub no longer runs {self._server.label} (check {attempt.number})",
                    )
                logger.debug("%s still %s", self._server.label, model.get("pending") or "running")
        return StopResult(
            StopOutcome.STOPPING,
            f"the hub accepted the stop of {self._server.label} but still runs it after "
            f"{self._verify_timeout_s:g} s",
        )


def own_base_url(targets: Mapping[tuple[str, str], str], server: HubServer) -> str | None:
    """The server's own base URL, or ``None`` while the routing table has no route for it yet."""
    url = targets.get((server.user, server.name))
    if url is None:
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") else None


_USER_PATH = re.compile(r"/user/(?P<user>[^/]+)/(?:(?P<server>[^/]+)/)?$")


def server_from_env_or_url(env: Mapping[str, str], url: str | None) -> HubServer | None:
    """Which hub server this is: ``JUPYTERHUB_USER``/``JUPYTERHUB_SERVER_NAME`` inside a hub user's
    server (what ``jupyterhub-singleuser`` is given), else a ``…/user/NAME/[SERVER/]`` URL."""
    if env.get("JUPYTERHUB_USER") and env.get("JUPYTERHUB_API_URL"):
        name = env.get("JUPYTERHUB_SERVER_NAME", "")
        user = env["JUPYTERHUB_USER"]
        path = f"/user/{quote(user, safe='')}/" + (f"{quote(name, safe='')}/" if name else "")
        return HubServer(user=user, name=name, path=path, started=None, last_activity=None)
    match = _USER_PATH.search(urlsplit(url or "").path)
    if match is None:
        return None
    user, name = unquote(match["user"]), unquote(match["server"] or "")
    return HubServer(user=user, name=name, path=match.group(0), started=None, last_activity=None)


class HubStop:
    """The stop of one server through the hub for ``watch`` and the in-server extension, which hold no hub
    connection of their own: it is opened for the stop and closed after it."""

    def __init__(
        self,
        hub_url: str,
        token: str | None,
        server: HubServer,
        *,
        remove: bool = False,
        verify_tls: bool = True,
        timeout_s: float = 10.0,
        verify_timeout_s: float = 30.0,
    ) -> None:
        self._hub_url = hub_url if hub_url.endswith("/") else hub_url + "/"
        self._token = token
        self._server = server
        self._remove = remove
        self._verify_tls = verify_tls
        self._timeout_s = timeout_s
        self._verify_timeout_s = verify_timeout_s

    @property
    def description(self) -> str:
        remove = " (remove)" if self._remove and self._server.name else ""
        return f"DELETE {Connection(self._hub_url).display_url}{self._server.api_path}{remove}"

    async def stop(self, decision: Decision) -> StopResult:
        conn = Connection(
            self._hub_url, token=self._token, verify_tls=self._verify_tls, timeout_s=self._timeout_s
        )
        async with conn:
            api = HubApi(conn)
            # From inside, the deadline can come before the hub has finished starting the server (it
            # waits for it to answer): a stop then would fail the spawn. Not until the hub says ready.
            with contextlib.suppress(RemoteError):
                model = await api.server_model(self._server)
                if model is not None and model.get("pending") == "spawn":
                    return StopResult(StopOutcome.STOPPING, f"the hub is still starting {self._server.label}")
            stopper = HubStopper(
                api, self._server, remove=self._remove, verify_timeout_s=self._verify_timeout_s
            )
            return await stopper.stop(decision)
