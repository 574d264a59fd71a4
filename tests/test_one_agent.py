"""One agent per target and journal: a second ``watch`` refuses with one line; a dead agent's claim is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lamplighter.errors import ConfigError
from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from tests.waiting import wait_until


def watch(server: LocalServer, journal: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lamplighter",
        "watch",
        "--url",
        server.url,
        "--journal",
        str(journal),
        *extra,
    ]


def env(server: LocalServer) -> dict[str, str]:
    return {**os.environ, "LAMPLIGHTER_TOKEN": server.token}


def watching(journal: Path) -> bool:
    if not journal.exists():
        return False
    with Journal(journal) as j:
        return any(e.summary.startswith("watching") for e in j.events(kind="agent"))


def test_a_second_agent_on_the_same_target_refuses_in_one_line(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    first = subprocess.Popen(
        watch(jupyter, journal, "--idle-timeout", "1h"),
        env=env(jupyter),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: watching(journal), timeout_s=30, what="the first agent to start watching")
        # --once, so that an agent that does not refuse ends anyway and fails the test instead of hanging.
        second = subprocess.run(
            watch(jupyter, journal, "--once", "--idle-timeout", "1s", "--startup-grace", "0"),
            env=env(jupyter),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"already watched by pid {first.pid}" in second.stderr
        assert jupyter.running, "the refused agent must not have stopped the server"
        # The claim dies with its process, however it ends: no stale lock to clean up by hand.
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        third = subprocess.run(
            watch(jupyter, journal, "--once"),
            env=env(jupyter),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert third.returncode == 0, third.stderr
    finally:
        first.kill()
        first.wait(10)


def test_claims_are_per_target(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as one, Journal(tmp_path / "j.sqlite3") as other:
        with one.claim("http://127.0.0.1:1/"), other.claim("http://127.0.0.1:2/"):
            refused = pytest.raises(ConfigError, match=f"already watched by pid {os.getpid()}")
            with refused, other.claim("http://127.0.0.1:1/"):
                pass
        with other.claim("http://127.0.0.1:1/"):  # released when the first block ended
            pass


def test_one_server_is_one_claim_however_it_is_spelled(tmp_path: Path) -> None:
    # The extension knows its server as http://localhost:8888/, a watch as http://127.0.0.1:8888.
    one, other = Journal(tmp_path / "j.sqlite3"), Journal(tmp_path / "j.sqlite3")
    with one, other, one.claim("http://localhost:8888/lab-base/"):
        for spelling in ("http://127.0.0.1:8888/lab-base", "http://[::1]:8888/lab-base/"):
            with pytest.raises(ConfigError, match="already watched"), other.claim(spelling):
                pass
        with other.claim("http://127.0.0.1:8889/lab-base/"):
            pass


async def test_a_hub_service_claims_its_hub_once(tmp_path: Path) -> None:
    # A claim per server was one open lock file per server: at 10,000 servers the service ran out of
    # file descriptors (bench/bench_hub.py). The service now claims its hub; a second one is refused.
    import asyncio

    from lamplighter.hub.fleet import HubFleet
    from lamplighter.platforms.jupyterhub import HubApi
    from lamplighter.remote.connection import Connection
    from lamplighter.settings import load_settings

    hub = "http://127.0.0.1:9/hub/api/"  # nothing listens there: every list fails and is tried again
    flags = {"hub_url": hub, "hub_token": "t", "journal": str(tmp_path / "j.sqlite3"), "cull_every": "1s"}
    settings = load_settings(flags, env={})
    async with Connection(hub, token="t", timeout_s=1) as one, Connection(hub, token="t", timeout_s=1) as two:
        with Journal(settings.journal) as journal, Journal(settings.journal) as other:
            first = HubFleet(settings, HubApi(one), journal, token="t")
            task = asyncio.create_task(first.run())
            try:
                await asyncio.sleep(0)  # run() takes its claim before its first await
                with pytest.raises(ConfigError, match=f"already watched by pid {os.getpid()}"):
                    await asyncio.wait_for(HubFleet(settings, HubApi(two), other, token="t").run(), 10)
                assert not task.done()
            finally:
                first.request_exit()
                await asyncio.wait_for(task, 10)
            with other.claim(hub):  # released when the service ended
                pass
