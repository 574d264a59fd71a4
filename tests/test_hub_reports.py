"""The in-server extension reports to ``lamplighter hub`` instead of being probed, and the service's status
page and metrics, against the real hub of tests/hub.py.

Users named ``ext*`` run the lamplighter extension in their server (its own idle timeout is 6 s,
tests/hub.py); :meth:`Hub.set_env` points it at the service under test with a 1 s report interval.
The service (fleet + its endpoint) runs in the test's event loop on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamplighter.hub.fleet import HubFleet
from lamplighter.hub.reports import ReportedProbe
from lamplighter.hub.service import HubService, serving
from lamplighter.journal import Journal
from lamplighter.platforms.jupyterhub import HubApi
from lamplighter.remote import Connection
from lamplighter.settings import Settings
from tests.conftest import cli
from tests.hub import Hub, hub_settings, new_user
from tests.test_hub_fleet import busy_cell
from tests.waiting import wait_until_async

pytestmark = pytest.mark.slow


def service_settings(hub: Hub, tmp_path: Path, **overrides: Any) -> Settings:
    """:func:`hub_settings` with the service's endpoint (port 0) and a 2 s request timeout."""
    return hub_settings(
        hub, tmp_path, **{"service_url": "http://127.0.0.1:0", "request_timeout": "2s", **overrides}
    )


@asynccontextmanager
async def running_service(hub: Hub, settings: Settings) -> AsyncIterator[tuple[HubFleet, HubService]]:
    """The fleet with its endpoint, wired as ``lamplighter hub`` wires them (cli/hub.py)."""
    async with Connection(hub.api, token=hub.service_token) as conn:
        with Journal(settings.journal) as journal:
            async with serving(settings, journal, hub_url=hub.api, token=hub.service_token) as service:
                assert service is not None
                fleet = HubFleet(
                    settings, HubApi(conn), journal, token=hub.service_token, hooks=service.hooks
                )
                service.hooks.book.on_unknown = fleet.heard_from
                task = asyncio.create_task(fleet.run())
                try:
                    yield fleet, service
                finally:
                    fleet.request_exit()
                    await asyncio.wait_for(task, timeout=30)


def reporting_to(hub: Hub, name: str, service: HubService) -> None:
    hub.set_env(name, {"LAMPLIGHTER_REPORT_TO": service.url, "LAMPLIGHTER_REPORT_INTERVAL": "1s"})


def probe_of(service: HubService, name: str) -> ReportedProbe | None:
    for watched in service.hooks.watched.values():
        if watched.server.user == name:
            return watched.probe
    return None


async def watched_probe(service: HubService, name: str, *, timeout_s: float = 30) -> ReportedProbe:
    found = await wait_until_async(
        lambda: probe_of(service, name), timeout_s=timeout_s, what=f"{name} watched"
    )
    assert isinstance(found, ReportedProbe)
    return found


def user_token(hub: Hub, name: str, scopes: list[str] | None = None) -> str:
    body: dict[str, Any] = {"note": "test"}
    if scopes is not None:
        body["scopes"] = scopes
    answer = hub.call("POST", f"users/{name}/tokens", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def forged_report(name: str, started: str, *, server_name: str = "") -> dict[str, Any]:
    """What a report says of a server idle since it started: no kernels, nothing working."""
    return {
        "user": name,
        "server_name": server_name,
        "interval_s": 60,
        "decision": {"verdict": "stop", "reason": "idle", "reasons": ["idle"]},
        "snapshot": {"started": started, "last_activity": started, "connections": 0},
    }


async def post(url: str, body: Any, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url + "api/report", json=body, headers=headers)


async def test_a_reporting_server_is_not_probed_until_its_reports_go_stale(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users, prefix="ext")
    settings = service_settings(hub, tmp_path, idle_timeout="10m")
    async with running_service(hub, settings) as (_, service):
        reporting_to(hub, name, service)
        await asyncio.to_thread(hub.start, name)
        probe = await wait_until_async(
            lambda: (p := probe_of(service, name)) is not None and p.reported > 0 and p,
            timeout_s=30,
            what="the service to use the server's reports",
        )
        assert isinstance(probe, ReportedProbe)
        direct, reported = probe.direct_probes, probe.reported
        # Five more reports (one a second), each woke the server's agent: not one request to the server.
        await wait_until_async(lambda: probe.reported >= reported + 5, timeout_s=20, what="five reports")
        assert probe.direct_probes == direct
        # The extension's own verdict is a stop (6 s idle) but it never stops the server itself.
        assert hub.server(name) is not None

        # Frozen: no more reports. Twice the interval (+1 s) later the service probes the server itself.
        pid = int(hub.server(name)["state"]["pid"])  # type: ignore[index]
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_at = asyncio.get_running_loop().time()
            await wait_until_async(
                lambda: probe.direct_probes > direct, timeout_s=15, what="probing to resume"
            )
            assert asyncio.get_running_loop().time() - frozen_at >= 2.0  # not before the report was stale
        finally:
            os.kill(pid, signal.SIGCONT)
        # Reporting again: the reports are used again.
        again = probe.reported
        await wait_until_async(lambda: probe.reported > again, timeout_s=20, what="reports to be used again")
    assert hub.server(name) is not None


async def test_a_report_is_accepted_only_with_that_servers_own_users_token(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    alice, bob = new_user(hub_users, prefix="r"), new_user(hub_users, prefix="r")
    for name in (alice, bob):
        assert hub.call("POST", f"users/{name}").status_code in (201, 409)
    bob_token = user_token(hub, bob)
    bob_default_only = user_token(hub, bob, [f"access:servers!server={bob}/"])
    now = datetime.now(timezone.utc).isoformat()
    settings = service_settings(hub, tmp_path)
    async with running_service(hub, settings) as (_, service):
        forged = await post(service.url, forged_report(alice, now), bob_token)
        assert forged.status_code == 403, forged.text
        assert "not " + alice in forged.json()["message"]
        assert (await post(service.url, forged_report(alice, now), None)).status_code == 401
        assert (await post(service.url, forged_report(alice, now), "not-a-token")).status_code == 403
        # The service's own token is a service's: it reports for nobody.
        assert (await post(service.url, forged_report(alice, now), hub.service_token)).status_code == 403
        bad = await post(service.url, {"user": bob}, bob_token)
        assert bad.status_code == 400 and "not a report" in bad.json()["message"]
        # A token limited to one server reports for that server only.
        other = await post(service.url, forged_report(bob, now, server_name="gpu"), bob_default_only)
        assert other.status_code == 403, other.text
        accepted = await post(service.url, forged_report(bob, now), bob_default_only)
        assert accepted.status_code == 202, accepted.text
        assert (await post(service.url, forged_report(bob, now), bob_token)).status_code == 202
        # Each token was asked of the hub once (cached), the refused ones included.
        assert service._owners.lookups == 4
    assert service.hooks.book.received == 2


async def test_a_report_saying_idle_never_stops_a_server_whose_kernel_is_busy(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users, prefix="r")
    await asyncio.to_thread(hub.start, name)
    started = str(hub.server(name)["started"])  # type: ignore[index]
    token = user_token(hub, name)
    settings = service_settings(hub, tmp_path, idle_timeout="3s", busy_recheck="0.5s")
    async with busy_cell(hub, name), running_service(hub, settings) as (_, service):
        probe = await watched_probe(service, name, timeout_s=15)
        answer = await post(service.url, forged_report(name, started), token)
        assert answer.status_code == 202, answer.text

        def kept_on_its_own_look() -> bool:
            row = next(r for r in service.hooks.rows() if r.server.user == name)
            return row.decision is not None and "looked before the stop" in row.decision.reason

        await wait_until_async(kept_on_its_own_look, timeout_s=20, what="the look to keep it")
        looks, checks = probe.direct_probes, probe.reported
        # The next checks rest on the same report and the same look.
        await wait_until_async(lambda: probe.reported >= checks + 3, timeout_s=20, what="more checks")
        assert probe.direct_probes == looks  # one look per report, not one per check
        assert hub.server(name) is not None
    with Journal(settings.journal) as journal:
        assert [e for e in journal.events(kind="action") if e.summary.startswith("stop ")] == []


async def test_the_service_stops_a_reporting_server_through_the_hub_on_time(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users, prefix="ext")
    settings = service_settings(hub, tmp_path, idle_timeout="4s")
    async with running_service(hub, settings) as (_, service):
        reporting_to(hub, name, service)
        await asyncio.to_thread(hub.start, name)
        probe = await watched_probe(service, name)

        def stopped() -> bool:
            return hub.server(name) is None

        await wait_until_async(lambda: asyncio.to_thread(stopped), timeout_s=40, what="the stop")  # type: ignore[arg-type, return-value]
        assert probe.reported > 0
        assert probe.direct_probes <= 1  # the one look before the stop
    with Journal(settings.journal) as journal:
        [stop] = [e for e in journal.events(kind="action") if e.summary.startswith("stop ")]
    assert stop.verdict == "stopped", stop.summary
    assert stop.detail["stopper"] == f"DELETE {hub.api}users/{name}/server"
    assert 0 <= stop.detail["decided_after_s"] <= 1.0, stop.detail
    # Stopped with the service's token, never by the extension with the server's own.
    log = hub.log.read_text()
    assert re.search(rf"DELETE /hub/api/users/{name}/server\S* \(lamplighter@", log), log[-3000:]
    assert not re.search(rf"DELETE /hub/api/users/{name}/server\S* \({name}@", log)


async def test_the_status_page_and_metrics_list_every_server_for_admins_only(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    reporting, probed = new_user(hub_users, prefix="ext"), new_user(hub_users, prefix="r")
    # The tests' own service may read every server (admin:servers): what the page shows, it may see.
    assert hub.call("POST", f"users/{probed}").status_code == 201
    admin_token, user_token_ = hub.admin_token, user_token(hub, probed)
    settings = service_settings(hub, tmp_path, idle_timeout="10m")
    async with running_service(hub, settings) as (_, service):
        reporting_to(hub, reporting, service)
        await asyncio.gather(asyncio.to_thread(hub.start, reporting), asyncio.to_thread(hub.start, probed))

        def both_seen() -> bool:
            rows = {r.server.user: r for r in service.hooks.rows()}
            return (
                reporting in rows
                and probed in rows
                and rows[reporting].source == "report"
                and all(r.decision is not None for r in rows.values())
            )

        await wait_until_async(both_seen, timeout_s=30, what="both servers judged")
        probes = {r.server.user: r.direct_probes for r in service.hooks.rows()}
        async with httpx.AsyncClient(timeout=10) as client:

            async def get(path: str, token: str | None) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return await client.get(service.url + path, headers=headers)

            assert (await get("", None)).status_code == 401
            assert (await get("metrics", user_token_)).status_code == 403  # a user: only their own servers
            assert (await get("", hub.nodelete_token)).status_code == 200  # read:servers
            page = await get("", admin_token)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            for name, seen in ((reporting, "its own report"), (probed, "the service&#x27;s probe")):
                row = re.search(rf'<tr data-server="{name}">(.*?)</tr>', page.text, re.S)
                assert row is not None, page.text
                assert "KEEP" in row.group(1) and seen in row.group(1)
                assert re.search(r"\d\d:\d\d:\d\d UTC \(in \d+m", row.group(1)), row.group(1)  # planned stop
            status = (await get("api/status", hub.service_token)).json()["servers"]
            by_user = {s["user"]: s for s in status}
            assert by_user[reporting]["source"] == "report" and by_user[probed]["source"] == "probe"
            assert by_user[probed]["verdict"] == "keep" and by_user[probed]["stop_at"]
            assert by_user[probed]["reasons"]
            metrics = (await get("metrics", admin_token)).text
            for name in (reporting, probed):
                assert re.search(
                    rf'lamplighter_verdict\{{target="[^"]*/user/{name}/",verdict="keep"\}} 1\.0', metrics
                ), metrics
                assert re.search(rf'lamplighter_seconds_until_stop\{{target="[^"]*/user/{name}/"\}}', metrics)
            for _ in range(10):  # looking is not probing
                await get("", admin_token)
                await get("metrics", admin_token)
        # Not one probe more for the page views (the probed server is not due for minutes).
        assert {r.server.user: r.direct_probes for r in service.hooks.rows()} == probes
    assert json.loads(json.dumps(status))  # the JSON form is plain JSON


async def test_a_reporting_server_started_between_lists_is_watched_at_its_first_report(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users, prefix="ext")
    # A list an hour apart: only the server's own report can make the service look sooner.
    settings = service_settings(hub, tmp_path, idle_timeout="10m", cull_every="1h")
    async with running_service(hub, settings) as (fleet, service):
        await wait_until_async(lambda: fleet.passes >= 1, timeout_s=10, what="the first list")
        reporting_to(hub, name, service)
        await asyncio.to_thread(hub.start, name)
        ready_at = asyncio.get_running_loop().time()
        await watched_probe(service, name, timeout_s=20)
        # Within a report interval (1 s) and the gap between two lists (1 s) of being ready, and more
        # for a loaded machine; an hour without the report.
        assert asyncio.get_running_loop().time() - ready_at < 15
        assert fleet.passes >= 2


def test_lamplighter_hub_serves_its_endpoint_at_the_service_url(hub: Hub, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "LAMPLIGHTER_"))}
    env |= {"JUPYTERHUB_API_TOKEN": hub.service_token, "JUPYTERHUB_API_URL": hub.api}
    bad = cli("hub", "--service-url", "ftp://127.0.0.1:1", "--journal", str(tmp_path / "j.sqlite3"), env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "lamplighter: service_url: expected http://HOST:PORT, got 'ftp://127.0.0.1:1'"
    ]
    # A hub-managed service with a url gets these two from the hub.
    env |= {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:0", "JUPYTERHUB_SERVICE_PREFIX": "/services/ll/"}
    args = ["-m", "lamplighter", "hub", "--timeout", "1h", "--journal", str(tmp_path / "journal.sqlite3")]
    service = subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert service.stderr is not None
        found = None
        while found is None:  # the bound address is logged once it listens
            line = service.stderr.readline()
            assert line, "the service exited before it listened"
            found = re.search(r"metrics at (http://127\.0\.0\.1:\d+/services/ll/)", line)
        url = found.group(1)
        answer = httpx.get(
            url + "metrics", headers={"Authorization": f"token {hub.service_token}"}, timeout=10
        )
        assert answer.status_code == 200 and "lamplighter_probes" in answer.text
        assert httpx.get(url + "metrics", timeout=10).status_code == 401
    finally:
        service.send_signal(signal.SIGTERM)
        _, rest = service.communicate(timeout=60)
    assert service.returncode == 0, rest
    assert hub.service_token not in rest
