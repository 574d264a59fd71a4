"""Watching a hub's servers creates no activity in the hub, and every stop of a hub server goes through the hub.

Against the real hub of tests/hub.py, whose activity intervals are lowered to 1 s (see there): the
hub reads the proxy's route activity every second, and each server reports its own every second.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import httpx
import pytest

from lamplighter.journal import Journal
from lamplighter.platforms.jupyter import JupyterServer
from lamplighter.remote import Connection
from tests.hub import Hub
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.slow


def new_user(users: list[str], prefix: str = "p") -> str:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    users.append(name)
    return name


def hub_activity(hub: Hub, name: str) -> str:
    return str(hub.server(name)["last_activity"])  # type: ignore[index]


def one_activity_cycle(hub: Hub, witness: str) -> None:
    """Until the hub has taken in activity once more: a tracked request to ``witness`` through the proxy
    shows up in the witness's hub ``last_activity`` only after the hub has read the proxy's routes and
    the servers' reports again."""
    before = hub_activity(hub, witness)
    answer = httpx.get(
        f"{hub.public}/user/{witness}/api/status", headers={"Authorization": f"token {hub.admin_token}"}
    )
    assert answer.status_code == 200, answer.text
    wait_until(lambda: hub_activity(hub, witness) > before, timeout_s=20, what="the hub to see activity")


async def test_probes_at_the_servers_own_address_leave_the_hubs_last_activity_unchanged(
    hub: Hub,
    hub_users: list[str],
) -> None:
    watched, witness = new_user(hub_users), new_user(hub_users)
    await asyncio.gather(asyncio.to_thread(hub.start, watched), asyncio.to_thread(hub.start, witness))
    await asyncio.to_thread(one_activity_cycle, hub, witness)  # the start's own activity is in
    before = hub_activity(hub, watched)
    async with Connection(hub.own_url(watched), token=hub.service_token) as conn:
        probe = JupyterServer(conn)
        for _ in range(200):  # a day of probes at one per idle wait, and more
            await probe.snapshot()
    for _ in range(2):  # the proxy's routes and the servers' own reports, each read again since
        await asyncio.to_thread(one_activity_cycle, hub, witness)
    assert hub_activity(hub, watched) == before

    # The control: the same probes through the proxy are the user's activity in the hub.
    async with Connection(f"{hub.public}/user/{watched}/", token=hub.service_token) as conn:
        for _ in range(5):
            await JupyterServer(conn).snapshot()
    await wait_until_async(
        lambda: asyncio.to_thread(lambda: hub_activity(hub, watched) > before),
        timeout_s=20,
        what="proxied probes to show as activity",
    )


def test_watch_behind_a_hub_stops_through_the_hub(
    hub: Hub,
    hub_users: list[str],
    tmp_path: Path,
) -> None:
    from lamplighter.cli import main

    name = new_user(hub_users)
    hub.start(name)
    journal = tmp_path / "journal.sqlite3"
    code = main(
        [
            "watch",
            "--url",
            f"{hub.public}/user/{name}/",
            "--token",
            hub.service_token,
            "--hub-url",
            hub.api,
            "--hub-token",
            hub.service_token,
            "--idle-timeout",
            "2s",
            "--no-process-signal",
            "--journal",
            str(journal),
        ]
    )
    assert code == 0
    assert hub.server(name) is None
    with Journal(journal) as j:
        [stop] = [e for e in j.events(kind="action") if e.summary.startswith("stop ")]
    assert stop.verdict == "stopped", stop.summary
    assert stop.detail["stopper"] == f"DELETE {hub.api}users/{name}/server"


def test_the_extension_in_a_hub_users_server_stops_through_the_hub(
    hub: Hub,
    hub_users: list[str],
) -> None:
    name = new_user(hub_users, prefix="ext")
    hub.start(name)
    # The extension's idle timeout is 6 s (tests/hub.py): the hub stops the server, no /api/shutdown.
    wait_until(lambda: hub.server(name) is None, timeout_s=40, what="the extension to stop its server")
    log = hub.log.read_text()
    # Asked with the server's own token (the hub logs the token's owner), and stopped by the hub itself.
    assert re.search(rf"DELETE /hub/api/users/{name}/server\S* \({name}@127\.0\.0\.1\)", log), log[-3000:]
    assert f"User {name} server took" in log
    assert "/api/shutdown" not in log
    # The hub ends the server while its DELETE is answered: the verdict and the request are
    # journaled (before the DELETE is sent), the outcome is the hub's to log.
    with Journal(hub.log.parent / f"config-{name}" / "journal.sqlite3") as j:
        [verdict] = [e for e in j.events(kind="decision") if e.verdict == "stop"]
        requested = [e for e in j.events(kind="action") if e.verdict == "requested"]
    assert "idle" in verdict.summary
    [request] = requested
    assert request.summary.startswith(f"stop requested: DELETE {hub.api}users/{name}/server"), request.summary
    assert request.at >= verdict.at and 0 <= request.detail["decided_after_s"] <= 2.0, request.detail
