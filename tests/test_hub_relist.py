"""What the hub service's re-list costs the hub: the routing table is read only for a new server.

Each ``cull_every`` the service lists the hub's ready servers to find the ones that started or
stopped. The routing table (``GET /hub/api/proxy``) only gives a new server its own address; at
10,000 servers it is as many pages again as the user list, so a re-list that finds nothing new
must not read it (bench/bench_hub.py measures the pages).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lamplighter.hub.fleet import HubFleet
from lamplighter.journal import Journal
from lamplighter.platforms.jupyterhub import HubApi
from lamplighter.remote import Connection
from lamplighter.settings import load_settings
from tests.hub import Hub

pytestmark = pytest.mark.slow


class CountingApi(HubApi):
    """The real API client, counting the routing-table reads."""

    route_reads = 0

    async def route_targets(self) -> dict[tuple[str, str], str]:
        self.route_reads += 1
        return await super().route_targets()


async def test_a_relist_that_finds_no_new_server_reads_no_routing_table(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = f"u{uuid.uuid4().hex[:8]}"
    hub_users.append(name)
    hub.start(name)
    settings = load_settings(
        {
            "hub_url": hub.api,
            "hub_token": hub.service_token,
            "journal": str(tmp_path / "journal.sqlite3"),
            "idle_timeout": "1h",
        },
        env={},
    )
    async with Connection(hub.api, token=hub.service_token) as conn:
        api = CountingApi(conn)
        with Journal(settings.journal) as journal:
            fleet = HubFleet(settings, api, journal, token=hub.service_token)
            try:
                await fleet.list_once()
                assert any(key[0] == name for key in fleet.watched), fleet.watched
                assert api.route_reads == 1  # the new server's address
                before = api.requests
                await fleet.list_once()
                await fleet.list_once()
                assert api.route_reads == 1, "a re-list with nothing new read the routing table"
                assert any(key[0] == name for key in fleet.watched)
                assert api.requests - before == 2  # one page of users each (this hub has few)
            finally:
                fleet.request_exit()
                await fleet.close()
