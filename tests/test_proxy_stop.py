"""A stop that ends, behind JupyterHub's configurable-http-proxy: verified in a few requests, journaled once, exit 0.

Behind a proxy the stopped server never refuses a connection: the proxy answers for it (503 while
its route still points at the dead server, 404 once the route is gone). Those answers mean "gone".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from lamplighter.model import Action, Decision, StopOutcome
from lamplighter.platforms.jupyter import JupyterShutdown
from lamplighter.remote.connection import Connection
from tests.chp import Proxy, running_proxy
from tests.conftest import ServerFactory

PREFIX = "/user/alice/"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    with running_proxy(tmp_path) as running:
        yield running


@pytest.fixture
def behind_proxy(server_factory: ServerFactory, proxy: Proxy) -> tuple[LocalServer, str]:
    """A real server at a JupyterHub-style prefix, routed through the proxy; the URL to watch it by."""
    server = server_factory(base_url=PREFIX)
    proxy.add_route(PREFIX.rstrip("/"), f"http://127.0.0.1:{server.port}")
    return server, proxy.url + PREFIX


def watch(url: str, token: str, journal: Path, *extra: str) -> subprocess.Popen[str]:
    """``lamplighter watch`` as its own process, so one that never ends fails the test instead of hanging it."""
    return subprocess.Popen(
        [sys.executable, "-m", "lamplighter", "watch", "--url", url, "--journal", str(journal), *extra],
        env={**os.environ, "LAMPLIGHTER_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_records(journal: Path) -> list[tuple[str | None, str]]:
    with Journal(journal) as j:
        return [(e.verdict, e.summary) for e in j.events(kind="action") if e.summary.startswith("stop ")]


def test_stop_behind_the_proxy_is_verified_in_few_requests_and_ends(
    behind_proxy: tuple[LocalServer, str], proxy: Proxy, tmp_path: Path
) -> None:
    server, url = behind_proxy
    journal = tmp_path / "j.sqlite3"
    agent = watch(url, server.token, journal, "--idle-timeout", "2s")
    try:
        out, err = agent.communicate(timeout=60)
    finally:
        agent.kill()
    assert agent.returncode == 0, err
    assert server.wait_exited(10) is not None, "the server still runs"
    requests = proxy.requests()
    shutdown = next(i for i, r in enumerate(requests) if r["method"] == "POST" and "api/shutdown" in r["url"])
    after = requests[shutdown + 1 :]
    assert 1 <= len(after) < 20, after
    ((verdict, summary),) = stop_records(journal)
    assert verdict == "stopped"
    assert "503" in summary, "the proxy's answer for the dead server is named"


def test_two_agents_on_one_server_both_end(behind_proxy: tuple[LocalServer, str], tmp_path: Path) -> None:
    # Two agents (two journals: two machines, or two users) decide at the same deadline; one POSTs the
    # shutdown first, the other's POST reaches a server that is going or gone.
    server, url = behind_proxy
    agents = [watch(url, server.token, tmp_path / f"j{i}.sqlite3", "--idle-timeout", "2s") for i in (1, 2)]
    try:
        results = [agent.communicate(timeout=60) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()  # reaped and its pipes closed, so nothing leaks into the next test
    assert [agent.returncode for agent in agents] == [0, 0], [err for _, err in results]
    assert server.wait_exited(10) is not None
    for i in (1, 2):
        assert [verdict for verdict, _ in stop_records(tmp_path / f"j{i}.sqlite3")] == ["stopped"]


async def test_a_stop_that_finds_the_server_gone_is_stopped(behind_proxy: tuple[LocalServer, str]) -> None:
    # The loser of the race, made deterministic: its POST reaches the proxy after the server exited.
    server, url = behind_proxy
    now = datetime.now(timezone.utc)
    decision = Decision(
        action=Action.STOP, reason="idle", reasons=("idle",), idle_since=now, stop_at=now, next_check_at=now
    )
    async with Connection(url, token=server.token) as conn:
        first = await JupyterShutdown(conn).stop(decision)
        assert first.outcome is StopOutcome.STOPPED, first.detail
        assert await asyncio.to_thread(server.wait_exited, 10) is not None
        second = await JupyterShutdown(conn).stop(decision)
    assert second.outcome is StopOutcome.STOPPED, second.detail
    assert "503" in second.detail


def _answer(status: int | None) -> httpx.Response:
    if status is None:
        raise httpx.ConnectError("connection refused")
    return httpx.Response(status, json={"message": "from the hub"})


@pytest.mark.parametrize(
    ("post", "statuses", "outcome"),
    [
        # (POST answer, api/status answers in turn, outcome); None is a refused connection.
        (None, [200, 200, None], StopOutcome.STOPPED),  # the server dropped the POST, then went away
        (503, [200, 503], StopOutcome.STOPPED),  # the proxy lost the POST; its route's server then died
        (200, [424], StopOutcome.STOPPED),  # JupyterHub: the user's server is not running
        (200, [502], StopOutcome.STOPPED),
        (200, [404], StopOutcome.STOPPED),  # the route is gone and the proxy has no default target
        (200, [403], StopOutcome.STOPPED),  # the hub, not the server: these credentials worked a moment ago
        (403, [200], StopOutcome.FAILED),  # the server itself refused the shutdown and still runs
        (403, [424], StopOutcome.STOPPED),  # the hub refused for a server that was gone already
        (500, [], StopOutcome.FAILED),
        (200, [500, 200, 200, 200], StopOutcome.STOPPING),  # still answering when the time is up
    ],
)
async def test_what_counts_as_gone(
    post: int | None, statuses: list[int | None], outcome: StopOutcome
) -> None:
    answers = iter(statuses)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "POST":
            return _answer(post)
        return _answer(next(answers, 200))

    now = datetime.now(timezone.utc)
    decision = Decision(
        action=Action.STOP, reason="idle", reasons=("idle",), idle_since=now, stop_at=now, next_check_at=now
    )
    transport = httpx.MockTransport(handler)
    async with Connection("http://hub.invalid/user/a/", token="t", transport=transport) as conn:
        stopper = JupyterShutdown(conn, verify_timeout_s=0.3, first_delay_s=0.01, longest_delay_s=0.05)
        result = await stopper.stop(decision)
    assert result.outcome is outcome, result.detail
    assert seen.count("POST") == 1
