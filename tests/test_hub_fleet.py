"""``lamplighter hub``'s fleet loop against a real JupyterHub and configurable-http-proxy (tests/hub.py).

One hub serves every test here (a session fixture); each test uses its own users and stops what it
started. The fleet runs in the test's event loop with a journal of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamplighter.journal import Journal
from lamplighter.model import Action, Decision
from lamplighter.platforms.jupyterhub import HubApi, HubServer, parse_users
from lamplighter.remote import Connection, KernelSession, start_kernel
from lamplighter.settings import Settings
from tests.hub import Hub, hub_settings, new_user, running_fleet
from tests.waiting import wait_until_async

pytestmark = pytest.mark.slow


def stops(settings: Settings) -> list[Any]:
    with Journal(settings.journal) as journal:
        return [e for e in journal.events(kind="action") if e.summary.startswith("stop ")]


async def gone(
    hub: Hub, settings: Settings, name: str, server_name: str = "", *, timeout_s: float = 40
) -> None:
    """Until the hub no longer runs the server and the fleet has journaled its stop."""
    path = f"/user/{name}/{server_name}/" if server_name else f"/user/{name}/"

    def done() -> bool:
        journaled = any(e.target.endswith(path) for e in stops(settings))
        return journaled and hub.server(name, server_name) is None

    await wait_until_async(
        lambda: asyncio.to_thread(done), timeout_s=timeout_s, what=f"{name}/{server_name} to be stopped"
    )


@asynccontextmanager
async def busy_cell(hub: Hub, name: str) -> AsyncIterator[str]:
    """A kernel in the user's server running ``time.sleep(600)``: silent, busy, printing nothing."""
    async with Connection(hub.own_url(name), token=hub.admin_token) as conn:
        kernel_id = await start_kernel(conn, "python3")
        async with KernelSession(conn, kernel_id) as ks:
            cell = asyncio.create_task(ks.execute("import time\ntime.sleep(600)"))

            async def busy() -> bool:
                kernel = await conn.get(f"api/kernels/{kernel_id}")
                return bool(kernel["execution_state"] == "busy")

            await wait_until_async(busy, timeout_s=30, what="the cell to run")
            try:
                yield kernel_id
            finally:
                cell.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await cell


async def test_an_idle_server_is_stopped_through_the_hub_within_a_second_of_its_deadline(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    settings = hub_settings(hub, tmp_path, idle_timeout="8s")
    async with running_fleet(hub, settings):
        name = new_user(hub_users)
        await asyncio.to_thread(hub.start, name)
        await gone(hub, settings, name)
    [stop] = stops(settings)
    assert stop.verdict == "stopped", stop.summary
    assert stop.detail["stopper"].startswith("DELETE ") and stop.detail["stopper"].endswith(
        f"users/{name}/server"
    )
    # Acted within a second of the deadline; verified gone after the hub's own stop on top.
    assert 0 <= stop.detail["decided_after_s"] <= 1.0, stop.detail
    assert stop.detail["overshoot_s"] - stop.detail["decided_after_s"] <= 15, stop.detail
    # The hub shows a clean "not running", not the proxy's 503: the hub itself stopped it.
    assert hub.server(name) is None


async def test_a_busy_silent_cell_keeps_its_server_while_an_idle_one_is_stopped(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    busy_user, idle_user = new_user(hub_users), new_user(hub_users)
    await asyncio.gather(asyncio.to_thread(hub.start, busy_user), asyncio.to_thread(hub.start, idle_user))
    decisions: list[tuple[HubServer, Decision]] = []
    settings = hub_settings(hub, tmp_path, idle_timeout="3s", busy_recheck="0.5s")
    async with busy_cell(hub, busy_user) as kernel_id:
        started = datetime.now(timezone.utc)
        async with running_fleet(hub, settings, decisions):
            await gone(hub, settings, idle_user)

            def kept_past_deadline() -> bool:
                # Kept on a probe taken well past its idle deadline (started + 3 s + 3 s).
                return any(
                    s.user == busy_user
                    and d.action is Action.KEEP
                    and "busy" in d.reason
                    and (d.next_check_at - started).total_seconds() > 6
                    for s, d in decisions
                )

            await wait_until_async(kept_past_deadline, timeout_s=30, what="a keep past the deadline")
            assert hub.server(busy_user) is not None
            async with Connection(hub.own_url(busy_user), token=hub.admin_token) as conn:
                assert (await conn.get(f"api/kernels/{kernel_id}"))["execution_state"] == "busy"
    assert [e.target.rstrip("/").rsplit("/", 1)[-1] for e in stops(settings)] == [idle_user]


async def test_named_servers_are_stopped_and_removed_when_asked(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users)
    await asyncio.to_thread(hub.start, name, "gpu")
    settings = hub_settings(hub, tmp_path, idle_timeout="3s", remove_named_servers="true")
    async with running_fleet(hub, settings):
        await gone(hub, settings, name, "gpu")
    [stop] = stops(settings)
    assert stop.verdict == "stopped" and stop.detail["stopper"].endswith(f"users/{name}/servers/gpu (remove)")
    listed = hub.call("GET", f"users/{name}", params={"include_stopped_servers": "1"}).json()
    assert "gpu" not in listed["servers"]  # removed, not only stopped


async def test_named_servers_are_left_alone_with_cull_named_servers_off(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users)
    await asyncio.to_thread(hub.start, name, "keep")
    await asyncio.to_thread(hub.start, name)
    settings = hub_settings(hub, tmp_path, idle_timeout="3s", cull_named_servers="false")
    async with running_fleet(hub, settings) as fleet:
        await gone(hub, settings, name)
        assert all(w.server.name == "" for w in fleet.watched.values() if w.server.user == name)
    assert hub.server(name, "keep") is not None


async def test_a_server_its_user_stops_between_passes_is_dropped_without_a_stop(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users)
    await asyncio.to_thread(hub.start, name)
    settings = hub_settings(hub, tmp_path, idle_timeout="1h")
    async with running_fleet(hub, settings) as fleet:
        await wait_until_async(
            lambda: any(w.server.user == name for w in fleet.watched.values()), timeout_s=10, what="watched"
        )
        await asyncio.to_thread(hub.stop, name)
        await wait_until_async(
            lambda: not any(w.server.user == name for w in fleet.watched.values()),
            timeout_s=10,
            what="the fleet to drop the stopped server",
        )
        # Started again: a new agent for the new server.
        await asyncio.to_thread(hub.start, name)
        await wait_until_async(
            lambda: any(w.server.user == name for w in fleet.watched.values()),
            timeout_s=10,
            what="watched again",
        )
    assert stops(settings) == []
    assert hub.server(name) is not None


async def test_one_frozen_server_does_not_delay_the_stop_of_another(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    frozen, idle = new_user(hub_users), new_user(hub_users)
    await asyncio.to_thread(hub.start, frozen)
    pid = int(hub.server(frozen)["state"]["pid"])  # type: ignore[index]
    os.kill(pid, signal.SIGSTOP)  # it accepts connections and never answers: every probe times out
    try:
        settings = hub_settings(hub, tmp_path, idle_timeout="8s", request_timeout="1s")
        async with running_fleet(hub, settings):
            await asyncio.to_thread(hub.start, idle)
            await gone(hub, settings, idle)
        [stop] = stops(settings)
        assert stop.target.endswith(f"/user/{idle}/") and stop.verdict == "stopped"
        assert stop.detail["decided_after_s"] <= 1.0, stop.detail
    finally:
        os.kill(pid, signal.SIGCONT)
    assert hub.server(frozen) is not None  # an outage is never idleness


async def test_a_stop_the_hub_refuses_is_journaled_and_retried_with_backoff(
    hub: Hub, hub_users: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lamplighter.agent")
    name = new_user(hub_users)
    await asyncio.to_thread(hub.start, name)
    settings = hub_settings(hub, tmp_path, idle_timeout="3s", busy_recheck="0.5s")
    async with running_fleet(hub, settings, token=hub.nodelete_token):

        def refused() -> list[Any]:
            return [e for e in stops(settings) if "HTTP 403" in e.summary]

        await wait_until_async(lambda: len(refused()) >= 2, timeout_s=40, what="a second refused stop")
    first, second = refused()[:2]
    # Asked again only after the backoff (5 s), although the agent looked every 0.5 s meanwhile.
    assert (second.at - first.at).total_seconds() >= 4.5
    assert first.verdict == "failed" and "next try in 5 s" in first.summary
    # Journaled once per refusal: the agent's rechecks while it waits out the backoff add no rows.
    assert [e.summary for e in stops(settings) if first.at < e.at < second.at] == []
    # "stopping with" is said once: the refusals are logged (warnings), the rechecks are not news.
    tries = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO
        and "stopping with" in r.getMessage()
        and f"/user/{name}/" in r.getMessage()
    ]
    assert len(tries) == 1, tries
    assert hub.server(name) is not None


async def test_a_dry_run_journals_the_stop_and_leaves_the_server_running(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users)
    await asyncio.to_thread(hub.start, name)
    settings = hub_settings(hub, tmp_path, idle_timeout="3s", dry_run="true")
    async with running_fleet(hub, settings):
        await wait_until_async(lambda: stops(settings), timeout_s=30, what="the dry-run stop")
    [stop] = stops(settings)
    assert stop.verdict == "skipped" and stop.detail["stopper"].startswith("dry run of DELETE"), stop.summary
    assert hub.server(name) is not None


async def test_pages_are_followed_with_the_page_size_setting(hub: Hub, hub_users: list[str]) -> None:
    names = [new_user(hub_users) for _ in range(3)]
    await asyncio.gather(*(asyncio.to_thread(hub.start, n) for n in names))
    async with Connection(hub.api, token=hub.service_token) as conn:
        api = HubApi(conn, page_size=1)
        listed = {s.user for s in await api.list_ready()}
        assert set(names) <= listed
        assert api.requests == len(listed)  # one user a page
        # The routing table is cut at the hub's page size too: every page is read.
        routes = await api.route_targets()
        assert {(n, "") for n in names} <= set(routes)
        assert api.requests > 2 * len(listed)


async def test_a_hub_without_pagination_sends_a_plain_list() -> None:
    model = {
        "name": "old",
        "admin": False,
        "servers": {
            "": {"ready": True, "pending": None, "url": "/user/old/", "started": "2026-01-01T00:00:00Z"},
            "starting": {"ready": False, "pending": "spawn", "url": "/user/old/starting/"},
        },
    }

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "application/jupyterhub-pagination+json"
        return httpx.Response(200, json=[model])

    conn = Connection("http://hub.test/hub/api/", token="t", transport=httpx.MockTransport(answer))
    async with conn:
        [server] = await HubApi(conn).list_ready()
    assert (server.user, server.name, server.path) == ("old", "", "/user/old/")
    assert parse_users([model])[0].api_path == "users/old/server"
