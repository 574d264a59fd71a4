"""Deleting hub users (jupyterhub-idle-culler's ``cull_users``), for hubs of temporary users.

The culler's rule, kept: a user is deleted only with no server running (the hub lists them with
``state=inactive``), once inactive for the idle timeout (the hub's ``last_activity``, else its
``created``) or older than ``max_age``. Admins only with ``cull_admin_users``; unlike the culler,
that holds for ``max_age`` too, and a user whose admin flag the token cannot read is never deleted.

The hub stops a user's running servers when asked to delete the user, so the user's model is read
again right before the ``DELETE``: a server started since the list keeps the user.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from lamplighter.errors import NotFound, RemoteError
from lamplighter.journal import Journal
from lamplighter.model import dates_relative_to, format_duration, format_time, parse_timestamp
from lamplighter.platforms.jupyterhub import HubApi

__all__ = ["HubUser", "UserCuller", "UserVerdict", "judge_user", "parse_user"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubUser:
    """A hub user as the users API shows it (``admin`` is None when the token cannot read it)."""

    name: str
    admin: bool | None
    created: datetime | None
    last_activity: datetime | None
    groups: tuple[str, ...]
    active_servers: tuple[str, ...]  # ready or pending ("" for the default server)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None  # an unreadable date is no evidence of inactivity


def parse_user(model: Mapping[str, Any]) -> HubUser:
    servers = model.get("servers")
    active = tuple(
        str(name)
        for name, server in (servers.items() if isinstance(servers, dict) else ())
        if isinstance(server, dict) and (server.get("ready") or server.get("pending"))
    )
    admin = model.get("admin")
    return HubUser(
        name=str(model["name"]),
        admin=admin if isinstance(admin, bool) else None,
        created=_time(model.get("created")),
        last_activity=_time(model.get("last_activity")),
        groups=tuple(str(g) for g in model.get("groups") or ()),
        active_servers=active,
    )


@dataclass(frozen=True)
class UserVerdict:
    delete: bool
    reason: str


def judge_user(
    user: HubUser,
    *,
    now: datetime,
    idle_timeout: timedelta,
    max_age: timedelta | None,
    cull_admin_users: bool,
) -> UserVerdict:
    """Pure: whether to delete the user now, and why (the culler's order: guards, inactivity, age)."""
    with dates_relative_to(now):  # reasons show a date only for a time not on now's day
        return _judge(user, now, idle_timeout, max_age, cull_admin_users=cull_admin_users)


def _judge(
    user: HubUser,
    now: datetime,
    idle_timeout: timedelta,
    max_age: timedelta | None,
    *,
    cull_admin_users: bool,
) -> UserVerdict:
    if user.active_servers:
        names = ", ".join(n or "default" for n in user.active_servers)
        return UserVerdict(False, f"user {user.name} kept: server(s) {names} still running")
    if user.admin is None and not cull_admin_users:
        return UserVerdict(
            False, f"user {user.name} kept: cannot tell if admin (the token lacks admin:users)"
        )
    if user.admin and not cull_admin_users:
        return UserVerdict(False, f"user {user.name} kept: admin (cull_admin_users off)")
    since = user.last_activity or user.created
    if since is not None and now - since >= idle_timeout:
        what = "last active" if user.last_activity else "created, never active,"
        return UserVerdict(
            True,
            f"user {user.name} has no server running and was {what} {format_time(since)} "
            f"(idle_timeout {format_duration(idle_timeout)})",
        )
    if max_age is not None and user.created is not None and now - user.created >= max_age:
        return UserVerdict(
            True,
            f"user {user.name} has no server running and was created {format_time(user.created)} "
            f"(max_age {format_duration(max_age)})",
        )
    last = format_time(since) if since else "unknown"
    return UserVerdict(False, f"user {user.name} kept: last active {last}")


class UserCuller:
    """One pass over the hub's server-less users: judge each, delete those due, journal what was done."""

    def __init__(
        self,
        api: HubApi,
        journal: Journal,
        *,
        idle_timeout: timedelta,
        group_timeouts: Mapping[str, timedelta],
        max_age: timedelta | None,
        cull_admin_users: bool,
        act: bool,
        hub: str,
    ) -> None:
        self._api = api
        self._journal = journal
        self._idle_timeout = idle_timeout
        self._group_timeouts = group_timeouts
        self._max_age = max_age
        self._cull_admin_users = cull_admin_users
        self._act = act  # False under --dry-run and --action none
        self._hub = hub  # scheme://host:port, as the journal names the hub
        self.deleted: list[str] = []
        self._reported: set[str] = set()  # a dry run says "would delete" once per user

    def _target(self, name: str) -> str:
        """A user's rows are journaled under their default server's path, next to its stops."""
        return f"{self._hub}/user/{quote(name, safe='')}/"

    def _judge(self, user: HubUser, now: datetime) -> UserVerdict:
        timeout = min(
            (self._idle_timeout, *(self._group_timeouts[g] for g in user.groups if g in self._group_timeouts))
        )
        return judge_user(
            user,
            now=now,
            idle_timeout=timeout,
            max_age=self._max_age,
            cull_admin_users=self._cull_admin_users,
        )

    async def cull(self, now: datetime) -> None:
        """Judge every server-less user; one user's failure is logged and the pass goes on."""
        for model in await self._api.list_inactive_users():
            user = parse_user(model)
            if not self._judge(user, now).delete:
                continue
            try:
                await self._delete(user.name, now)
            except RemoteError as exc:
                logger.warning("cannot delete user %s: %s", user.name, exc)
                self._journal.record(
                    self._target(user.name),
                    "action",
                    f"delete user {user.name} failed: {exc}",
                    at=now,
                    verdict="failed",
                )

    async def _delete(self, name: str, now: datetime) -> None:
        try:
            fresh = parse_user(await self._api.user_model(name))
        except NotFound:
            return  # deleted meanwhile
        verdict = self._judge(fresh, now)
        if not verdict.delete:
            logger.debug("%s", verdict.reason)
            return
        if not self._act:
            if name in self._reported:
                return
            self._reported.add(name)
            logger.info("would delete %s", verdict.reason)
            self._journal.record(
                self._target(name), "action", f"would delete {verdict.reason}", at=now, verdict="skipped"
            )
            return
        with contextlib.suppress(NotFound):  # deleted meanwhile: done all the same
            await self._api.delete_user(name)
        self.deleted.append(name)
        logger.info("deleted %s", verdict.reason)
        self._journal.record(
            self._target(name),
            "action",
            f"deleted {verdict.reason}",
            at=now,
            verdict="deleted",
            detail={"user": name},
        )
