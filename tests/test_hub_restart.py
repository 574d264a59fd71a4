"""The hub restarting under the service (a hub upgrade, a crash): the service goes on, stops nothing
wrongly while the hub is away, and resumes once it is back. A hub of its own (tests/hub.py) with
``cleanup_servers = False``, as production hubs run, so the users' servers outlive the hub."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lamplighter.model import Decision, parse_timestamp
from lamplighter.platforms.jupyterhub import HubServer
from tests.hub import hub_settings, running_fleet, running_hub
from tests.test_hub_fleet import busy_cell, gone, stops
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)  # two hub starts and three servers: ~55 s, several minutes on a loaded machine
async def test_the_service_rides_out_a_hub_restart(tmp_path: Path) -> None:
    with running_hub(tmp_path / "hub", cleanup_servers=False) as hub:
        assert hub.restart is not None
        idle, busy, later = "ridle", "rbusy", "rlater"
        await asyncio.gather(asyncio.to_thread(hub.start, idle), asyncio.to_thread(hub.start, busy))
        decisions: list[tuple[HubServer, Decision]] = []
        settings = hub_settings(hub, tmp_path, idle_timeout="10s", busy_recheck="0.5s")
        async with busy_cell(hub, busy), running_fleet(hub, settings, decisions) as fleet:
            await wait_until_async(
                lambda: {w.server.user for w in fleet.watched.values()} >= {idle, busy},
                timeout_s=20,
                what="both servers watched",
            )
            busy_agent = next(w.agent for w in fleet.watched.values() if w.server.user == busy)
            passes = fleet.passes

            idle_deadline = parse_timestamp(hub.server(idle)["started"]) + timedelta(seconds=10)  # type: ignore[index]

            def while_down() -> None:
                # The idle server's deadline passes while the hub is away. Its probes may fail meanwhile
                # (the server asks the hub about the service's token: HTTP 500), its stop cannot be asked.
                wait_until(
                    lambda: (
                        datetime.now(timezone.utc) > idle_deadline + timedelta(seconds=2)
                        and fleet.passes >= passes + 2
                    ),
                    timeout_s=60,
                    what="the idle server's deadline and two lists while the hub is down",
                )

            await asyncio.to_thread(hub.restart, while_down)
            # Back: the idle server is stopped through the hub, the busy one kept by the same agent.
            await gone(hub, settings, idle, timeout_s=40)
            assert hub.server(busy) is not None
            assert next(w.agent for w in fleet.watched.values() if w.server.user == busy) is busy_agent
            # And servers started after the restart are found.
            await asyncio.to_thread(hub.start, later)
            await wait_until_async(
                lambda: any(w.server.user == later for w in fleet.watched.values()),
                timeout_s=20,
                what="a server started after the restart to be watched",
            )
        assert [
            e.target.rstrip("/").rsplit("/", 1)[-1] for e in stops(settings) if e.verdict == "stopped"
        ] == [idle]
        assert not any(busy in e.target for e in stops(settings))
        # The hub kept the busy server across its restart (cleanup_servers off) and so did lamplighter.
        assert any(s.user == busy and "busy" in d.reason for s, d in decisions)
        for name in (busy, later):
            hub.stop(name)
