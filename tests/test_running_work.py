"""Never kill running work, end to end: silent jobs started from a real Jupyter terminal, and the in-server mode."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from tests.conftest import ServerFactory, watch
from tests.test_running_work_paths import terminal_running
from tests.waiting import wait_until

FAST_SIGNAL = ["--process-window", "1.5s", "--process-sample-interval", "0.2s"]


def start_terminal_job(server: LocalServer, job: str) -> None:
    """A terminal whose shell starts ``job`` in the background with nohup and then prints nothing."""
    terminal_running(server, f"nohup {job} >/dev/null 2>&1 & sleep 600")


def test_silent_cpu_job_keeps_the_app_until_it_ends(jupyter: LocalServer, tmp_path: Path) -> None:
    busy = f"{sys.executable} -c 'import time\nend=time.time()+6\nwhile time.time()<end: pass'"
    start_terminal_job(jupyter, busy)
    started = time.monotonic()
    journal = tmp_path / "j"
    assert (
        watch(
            jupyter, "--idle-timeout", "2s", "--busy-recheck", "0.5s", "--journal", str(journal), *FAST_SIGNAL
        )
        == 0
    )
    elapsed = time.monotonic() - started
    assert elapsed >= 6.0, f"stopped after {elapsed:.1f} s while the job was still running"
    with Journal(journal) as j:
        reasons = " ".join(e.summary for e in j.events(kind="decision"))
    assert "% CPU" in reasons and "pid " in reasons


def test_sleeping_background_job_does_not_keep_the_app(jupyter: LocalServer, tmp_path: Path) -> None:
    start_terminal_job(jupyter, "sleep 600")
    started = time.monotonic()
    assert watch(jupyter, "--idle-timeout", "2s", "--journal", str(tmp_path / "j"), *FAST_SIGNAL) == 0
    assert time.monotonic() - started < 5.0


def test_extension_culls_reports_and_stops(server_factory: ServerFactory, tmp_path: Path) -> None:
    journal = tmp_path / "ext.sqlite3"
    server = server_factory(
        extra_args=[
            '--ServerApp.jpserver_extensions={"lamplighter": True}',
            "--Lamplighter.idle_timeout=5",
            "--Lamplighter.kernel_timeout=1",
            "--Lamplighter.process_signal=False",
            f"--Lamplighter.journal={journal}",
        ]
    )
    headers = {"Authorization": f"token {server.token}"}
    kernel = httpx.post(
        server.url + "api/kernels", headers=headers, json={"name": "python3"}, timeout=10
    ).json()
    ws_url = server.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"

    def get(path: str) -> Any:
        return httpx.get(
            server.url + path, headers=headers, params={"no_track_activity": 1}, timeout=10
        ).json()

    with connect(ws_url, additional_headers=headers):
        wait_until(
            lambda: get(f"api/kernels/{kernel['id']}")["execution_state"] == "idle",
            timeout_s=20,
            what="the kernel to become idle",
        )
    wait_until(lambda: not get("api/kernels"), timeout_s=15, what="the idle kernel to be culled")
    status = httpx.get(server.url + "lamplighter/api/status", headers=headers, timeout=10)
    assert status.status_code == 200
    body = json.loads(status.text)
    assert body["checks"] >= 1 and body["settings"]["idle_timeout"] == "5s" and body["verdict"] == "keep"
    assert body["stop_at"] is not None
    assert server.wait_exited(20) is not None, "the idle server did not stop itself"
    assert "lamplighter: stopping the server: idle for" in server.log_path.read_text(errors="replace")
    with Journal(journal) as j:
        summaries = [e.summary for e in j.events(kind="action")]
    assert any(s.startswith(f"shut down kernel {kernel['id']}") for s in summaries)
    assert summaries[-1].startswith("stop stopped")
