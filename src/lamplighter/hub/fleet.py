"""The hub service's loop: one deadline-driven agent per ready server, the hub re-listed every ``cull_every``.

Each server gets its own :class:`~lamplighter.agent.Agent`, so it is probed once per idle wait (at
its deadline), not once per pass: the hub's culler asks the hub about every user every ``cull_every``
and stops up to that long late; here the stop lands within a second of each server's own deadline.
The list only finds servers that started or stopped meanwhile. A semaphore of ``concurrency``
bounds the requests in flight across every user (the culler serialises users).

One server's failure (a probe refused, a stop the hub rejects, a bug) is logged and journaled for
that server; the others go on, and the failed server gets a fresh agent at the next list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from lamplighter.agent import Agent, utcnow
from lamplighter.errors import ConfigError, LamplighterError, RemoteError
from lamplighter.hub.hooks import FleetHooks
from lamplighter.hub.policies import VetoStop, idle_timeout_for, load_veto_hook, parse_timeouts
from lamplighter.hub.users import UserCuller
from lamplighter.journal import Journal
from lamplighter.model import Decision
from lamplighter.notices import Notifier
from lamplighter.platforms.base import Probe, Stopper
from lamplighter.platforms.jupyter import JupyterServer
from lamplighter.platforms.jupyterhub import HubApi, HubServer, HubServerProbe, HubStopper, own_base_url
from lamplighter.remote.connection import Connection
from lamplighter.settings import Settings
from lamplighter.signals import Signal
from lamplighter.stoppers import CommandStopper, DryRun, NoStop

__all__ = ["HubFleet", "Watched", "hub_variables", "refuse_local_only"]

logger = logging.getLogger(__name__)

#: How long an agent whose server left the hub's list may take to finish its pass (a stop being
#: verified: the stopper's own budget is stop_verify_timeout).
_END_GRACE_S = 60.0
#: The shortest time between two lists that reports asked for.
_RELIST_GAP_S = 1.0


def hub_variables(server: HubServer) -> dict[str, str]:
    """What ``--warn-command`` and ``--command`` get beyond ``LAMPLIGHTER_*``: whose server it is."""
    return {
        "LAMPLIGHTER_HUB_USER": server.user,
        "LAMPLIGHTER_HUB_SERVER": server.name,
        "LAMPLIGHTER_HUB_SERVER_PATH": server.path,
    }


def refuse_local_only(settings: Settings) -> None:
    """The settings that act on this machine's files cannot reach a hub user's server: refused at start
    (exit 2) rather than silently ignored."""
    if settings.warn_before is not None and not settings.warn_command:
        raise ConfigError(
            "warn_before: the default notice (terminals, notice_file) is written on this machine, not in "
            "the users' servers; give --warn-command (it gets LAMPLIGHTER_HUB_USER, LAMPLIGHTER_HUB_SERVER "
            "and LAMPLIGHTER_HUB_SERVER_PATH), or warn from inside each server with the in-server extension"
        )
    default_keep_alive = Settings.__dataclass_fields__["keep_alive_file"].default
    if settings.keep_alive_file != default_keep_alive:
        raise ConfigError(
            "keep_alive_file: the hub service cannot see files in the users' servers; a keep-alive file "
            "or 'lamplighter snooze' works inside a server that runs the in-server extension"
        )


@dataclass
class Watched:
    """One server and the agent watching it."""

    server: HubServer
    probe: HubServerProbe
    agent: Agent
    task: asyncio.Task[None]
    conn: Connection


class HubFleet:
    """Watches every ready server of one hub until :meth:`request_exit`."""

    def __init__(
        self,
        settings: Settings,
        api: HubApi,
        journal: Journal,
        *,
        token: str | None,
        clock: Callable[[], datetime] = utcnow,
        on_decision: Callable[[HubServer, Decision], None] | None = None,
        tls: ssl.SSLContext | None = None,
        hooks: FleetHooks | None = None,
    ) -> None:
        self.settings = settings
        self._tls = tls  # the client certificate of a hub with internal SSL (hub/tls.py)
        self.api = api
        self.journal = journal
        self._token = token
        self._clock = clock
        self._on_decision = on_decision
        self._hooks = hooks
        self._limit = asyncio.Semaphore(settings.concurrency)
        # Checked here, at start: a bad entry or hook is a configuration error, not a warning per server.
        self._group_timeouts = parse_timeouts(settings.group_idle_timeouts, "group_idle_timeouts")
        self._profile_timeouts = parse_timeouts(settings.profile_idle_timeouts, "profile_idle_timeouts")
        self._veto = load_veto_hook(settings.veto_hook) if settings.veto_hook else None
        self._users = (
            UserCuller(
                api,
                journal,
                idle_timeout=settings.idle_timeout,
                group_timeouts=self._group_timeouts,
                max_age=settings.max_age,
                cull_admin_users=settings.cull_admin_users,
                # Users are deleted only where the hub's own stop is the action, and not in a dry run.
                act=settings.action == "shutdown" and not settings.dry_run,
                hub=self.hub_address,
            )
            if settings.cull_users
            else None
        )
        self.watched: dict[tuple[str, str, datetime | None], Watched] = {}
        self.passes = 0
        self._exit = asyncio.Event()
        self._relist = asyncio.Event()  # list_soon(): a report came from a server nobody watches yet
        self._unwanted: set[tuple[str, str]] = set()  # listed, but not ours (cull_named_servers off…)
        self._ending: set[asyncio.Task[None]] = set()

    def request_exit(self) -> None:
        """Let every agent finish its current pass, then return from :meth:`run`."""
        self._exit.set()
        for item in self.watched.values():
            item.agent.request_exit()

    @property
    def hub_address(self) -> str:
        """``scheme://host:port`` of the hub's API, as the journal names the hub."""
        base = self.api.display_url
        return base[: base.find("/", base.find("//") + 2)] if "//" in base else base

    def target_for(self, server: HubServer) -> str:
        """The name the journal keeps a server under: the hub's address and the server's proxy path."""
        return f"{self.hub_address}{server.path}"

    def wanted(self, server: HubServer) -> bool:
        if server.name:
            return self.settings.cull_named_servers
        return self.settings.cull_default_servers

    async def run(self) -> None:
        """List, start and end agents, sleep ``cull_every`` (or until asked to exit); repeat.

        One claim in the journal for the whole hub (a second service on it is refused, exit 2), not one
        per server: at 10,000 servers those were 10,000 open lock files.
        """
        with self.journal.claim(self.api.display_url):
            try:
                while not self._exit.is_set():
                    self._relist.clear()
                    await self.list_once()
                    await self._wait_to_list()
            finally:
                await self.close()

    def list_soon(self) -> None:
        """List the hub again now rather than at the next ``cull_every`` (at most once a second)."""
        self._relist.set()

    def heard_from(self, key: tuple[str, str]) -> None:
        """A report from a server no agent watches: list soon, unless the last list showed it is not ours."""
        if key not in self._unwanted:
            self.list_soon()

    async def _wait_to_list(self) -> None:
        waits = [asyncio.ensure_future(self._exit.wait()), asyncio.ensure_future(self._relist.wait())]
        try:
            await asyncio.wait(
                waits,
                timeout=self.settings.effective_cull_every.total_seconds(),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in waits:
                waiting.cancel()
        if self._relist.is_set() and not self._exit.is_set():
            with contextlib.suppress(asyncio.TimeoutError):  # a burst of reports is one list
                await asyncio.wait_for(self._exit.wait(), timeout=_RELIST_GAP_S)

    async def list_once(self) -> None:
        """One list of the hub: agents for new servers, agents of gone servers ended."""
        self.passes += 1
        try:
            async with self._limit:
                listed = await self.api.list_ready()
            servers = [s for s in listed if self.wanted(s)]
            current = {(s.user, s.name, s.started): s for s in servers}
            # The routing table only gives a new server its address; a re-list that finds none new
            # skips it (at 10,000 servers it is as many pages again as the users: bench/bench_hub.py).
            targets: dict[tuple[str, str], str] = {}
            if any(key not in self.watched or self.watched[key].task.done() for key in current):
                async with self._limit:
                    targets = await self.api.route_targets()
        except RemoteError as exc:
            # The hub restarting or briefly away: the agents go on with their servers; list again later.
            logger.warning("cannot list the hub's servers: %s", exc)
            return
        self._unwanted = {(s.user, s.name) for s in listed if not self.wanted(s)}
        for key, item in list(self.watched.items()):
            if key not in current or item.task.done():
                self._end(key)
        for key, server in current.items():
            if key in self.watched:
                self.watched[key].probe.update(server)
                continue
            url = own_base_url(targets, server)
            if url is None:
                logger.debug("%s: no route in the hub's routing table yet", server.label)
                continue
            self._start(key, server, url)
        await self._cull_users()  # after the agents are started: a users pass never delays a server

    async def _cull_users(self) -> None:
        """Users with no server left (cull_users): one request at a time, like the culler's pass."""
        if self._users is None:
            return
        try:
            async with self._limit:
                await self._users.cull(self._clock())
        except RemoteError as exc:
            logger.warning("cannot list the hub's users without a server: %s", exc)

    async def verdicts(self, memory_from: Journal | None = None) -> list[tuple[HubServer, Decision]]:
        """Every wanted ready server with its verdict now, acting on nothing (``status --hub``).

        Each is taken the watching agent's way (its memory from ``memory_from``, the service's journal,
        when given), at most ``concurrency`` requests at once.
        """
        servers = [s for s in await self.api.list_ready() if self.wanted(s)]
        targets = await self.api.route_targets()

        async def one(server: HubServer) -> tuple[HubServer, Decision] | None:
            url = own_base_url(targets, server)
            if url is None:
                return None
            settings = self.settings_for(server)
            target = self.target_for(server)
            if memory_from is not None:
                self.journal.save_memory(target, memory_from.load_memory(target), at=self._clock())
            async with Connection(
                url, token=self._token, timeout_s=settings.request_timeout.total_seconds(), tls=self._tls
            ) as conn:
                probe = HubServerProbe(JupyterServer(conn), server, self._limit, target=target)
                agent = Agent(settings, probe, NoStop(), self.journal, clock=self._clock)
                decision, _ = await agent.assess()
            return server, decision

        found = await asyncio.gather(*(one(s) for s in servers))
        return [item for item in found if item is not None]

    def _start(self, key: tuple[str, str, datetime | None], server: HubServer, url: str) -> None:
        settings = self.settings_for(server)
        timeout_s = settings.request_timeout.total_seconds()
        conn = Connection(
            url, token=self._token, verify_tls=settings.verify_tls, timeout_s=timeout_s, tls=self._tls
        )
        target = self.target_for(server)
        hooks = self._hooks
        inner: Probe = JupyterServer(conn)
        if hooks is not None:
            inner = hooks.probe_for(server, target, inner)
        probe = HubServerProbe(inner, server, self._limit, target=target)
        stopper = self._stopper(settings, server, target)
        seen: list[Callable[[Decision], None]] = []
        if self._on_decision is not None:
            report = self._on_decision
            seen.append(lambda decision: report(server, decision))
        agent_probe: Probe = probe
        signals: tuple[Signal, ...] = ()
        if hooks is not None:
            agent_probe, signals, hooked = hooks.instrument(server, target, probe)
            seen.append(hooked)

        def on_decision(decision: Decision) -> None:
            for call in seen:
                call(decision)

        notifier = None
        if settings.warn_before is not None:
            notifier = Notifier(settings, target, server_port=None, extra=hub_variables(server))
        agent = Agent(
            settings,
            agent_probe,
            stopper,
            self.journal,
            signals=signals,
            clock=self._clock,
            on_decision=on_decision,
            notifier=notifier,
        )
        if hooks is not None:
            hooks.watching(server, target, agent)
        task = asyncio.create_task(self._watch(server, agent), name=f"watch {server.label}")
        self.watched[key] = Watched(server, probe, agent, task, conn)
        logger.info("%s: watching at %s", server.label, conn.display_url)

    def _stopper(self, settings: Settings, server: HubServer, target: str) -> Stopper:
        """The hub's DELETE, behind the veto hook; ``--action`` and ``--dry-run`` as for ``watch``."""
        stopper: Stopper
        if settings.action == "none":
            return NoStop()
        if settings.action == "command" and settings.command:
            stopper = CommandStopper(settings.command, target, extra=hub_variables(server))
        else:
            stopper = HubStopper(
                self.api,
                server,
                remove=settings.remove_named_servers,
                verify_timeout_s=settings.stop_verify_timeout.total_seconds(),
                limit=self._limit,
            )
        if self._veto is not None:
            stopper = VetoStop(stopper, self._veto, server)
        return DryRun(stopper) if settings.dry_run else stopper

    def settings_for(self, server: HubServer) -> Settings:
        """The settings one server is judged by: its group's or profile's timeout if shorter; never this
        machine's signals (the hub's servers are not its processes)."""
        timeout, source = idle_timeout_for(
            server, self.settings.idle_timeout, self._group_timeouts, self._profile_timeouts
        )
        if source is not None:
            logger.debug("%s: idle timeout %s from its %s", server.label, timeout, source)
        return replace(
            self.settings,
            idle_timeout=timeout,
            process_signal=False,
            gpu_signal=False,
            watch_paths=(),
            url=None,
            heartbeat=None,  # one file per agent would be overwritten by every other server's
        )

    async def _watch(self, server: HubServer, agent: Agent) -> None:
        try:
            result = await agent.run(claimed=True)  # run() holds the hub's claim
            logger.debug("%s: agent done (%s)", server.label, result.decision.reason)
        except LamplighterError as exc:
            # Only this server: its agent is started again at the next list.
            logger.warning("%s: cannot watch: %s", server.label, exc)
        except Exception:
            logger.exception("%s: the agent failed", server.label)

    def _end(self, key: tuple[str, str, datetime | None]) -> None:
        """Let the agent finish what it is doing (a stop under way included), then close its connection."""
        item = self.watched.pop(key)
        if not item.task.done():
            logger.info("%s: no longer running in the hub; not watched any more", item.server.label)
        item.agent.request_exit()
        if self._hooks is not None:
            self._hooks.ended(item.server, item.probe.target)
        ending = asyncio.create_task(self._close_after(item), name=f"end {item.server.label}")
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)

    async def _close_after(self, item: Watched) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(item.task), timeout=_END_GRACE_S)
        except asyncio.TimeoutError:
            item.task.cancel()
            await asyncio.gather(item.task, return_exceptions=True)
        finally:
            await item.conn.aclose()

    async def close(self) -> None:
        """End every agent (each finishes its current pass, bounded by a grace period)."""
        for key in list(self.watched):
            self._end(key)
        await asyncio.gather(*self._ending, return_exceptions=True)
