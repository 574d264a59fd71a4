"""Running work is never stopped, on every path, against real servers and real jobs.

Each test starts a real Jupyter server and a real job (a silent ``nohup`` CPU loop in a terminal, a
kernel driven by ``lamplighter run notebook``) and runs the real ``watch`` / ``watch --once`` /
``status`` / in-server extension, with timeouts of seconds and the derived signal timing (no
hand-tuned windows): the first pass, a restart, cron's ``--once``, a job begun just before the
deadline, activity between two probes, culls of kernels nobody has seen yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import nbformat
from websockets.sync.client import connect

from lamplighter.journal import Journal, JournalEvent
from lamplighter.localserver import LocalServer
from lamplighter.model import parse_timestamp
from tests.conftest import ServerFactory, cli, watch
from tests.waiting import wait_until

BUSY = "import time\nend=time.time()+{seconds}\nwhile time.time()<end: pass"


def get(server: LocalServer, path: str) -> Any:
    """A read that is not activity, as lamplighter's own probes are."""
    answer = httpx.get(
        server.url + path,
        headers={"Authorization": f"token {server.token}"},
        params={"no_track_activity": 1},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()


def terminal_running(server: LocalServer, command: str) -> str:
    """A terminal whose shell runs ``command`` and then prints nothing: the job is silent."""
    answer = httpx.post(
        server.url + "api/terminals",
        headers={"Authorization": f"token {server.token}"},
        json={"shell_command": ["bash", "-c", command]},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["name"])


def nohup_busy(seconds: float) -> str:
    return f"nohup {sys.executable} -c '{BUSY.format(seconds=seconds)}' >/dev/null 2>&1 & sleep 600"


def age_s(moment: datetime) -> float:
    return (datetime.now(timezone.utc) - moment).total_seconds()


def wait_quiet(server: LocalServer, seconds: float) -> None:
    """Until nothing on the server has been active for ``seconds``: old interaction, as a cron job meets it."""

    def quiet() -> bool:
        stamps = [parse_timestamp(t["last_activity"]) for t in get(server, "api/terminals")]
        stamps += [parse_timestamp(k["last_activity"]) for k in get(server, "api/kernels")]
        stamps.append(parse_timestamp(get(server, "api/status")["started"]))
        return min(age_s(s) for s in stamps) >= seconds if stamps else True

    wait_until(quiet, timeout_s=30, what=f"{seconds} s without interaction")


def background_watch(server: LocalServer, *args: str) -> subprocess.Popen[bytes]:
    """``lamplighter watch`` in its own process (the token in the environment), for tests that act meanwhile."""
    return subprocess.Popen(
        [sys.executable, "-m", "lamplighter", "watch", "--url", server.url, "--no-process-signal", *args],
        env={**os.environ, "LAMPLIGHTER_TOKEN": server.token},
    )


def decision_events(journal: Path) -> list[JournalEvent]:
    with Journal(journal) as j:
        return j.events(kind="decision")


def decisions(journal: Path) -> list[str]:
    return [e.summary for e in decision_events(journal)]


def test_a_silent_job_with_old_interaction_survives_once_restart_and_watch(
    jupyter: LocalServer, tmp_path: Path
) -> None:
    terminal_running(jupyter, nohup_busy(12))
    job_started = time.monotonic()
    wait_quiet(jupyter, 2.5)
    journal = tmp_path / "j.sqlite3"
    common = ("--idle-timeout", "2s", "--startup-grace", "0", "--journal", str(journal))
    # cron: `watch --once`, then again (a restart reads the journal's memory), then a full watch.
    for _ in range(2):
        assert watch(jupyter, "--once", *common) == 0
        assert jupyter.running, "watch --once stopped the server while its job was running"
    assert any("% CPU" in d for d in decisions(journal)), decisions(journal)
    assert watch(jupyter, *common) == 0
    assert time.monotonic() - job_started >= 12, "the full watch stopped the server before the job ended"
    assert jupyter.wait_exited(20) is not None


def test_a_job_begun_two_seconds_before_the_deadline_is_kept(jupyter: LocalServer, tmp_path: Path) -> None:
    # The terminal is the only interaction; its shell starts computing 3 s later, 2 s before the
    # 5 s deadline, and computes for 5 s. The app must stay up until 5 s after the job ends.
    terminal_running(jupyter, f"sleep 3; {nohup_busy(5)}")
    created = time.monotonic()
    journal = tmp_path / "j.sqlite3"
    assert watch(jupyter, "--idle-timeout", "5s", "--startup-grace", "0", "--journal", str(journal)) == 0
    elapsed = time.monotonic() - created
    assert elapsed >= 3 + 5 + 5 - 0.5, (
        f"stopped {elapsed:.1f} s after the terminal opened: {decisions(journal)}"
    )
    with Journal(journal) as j:
        (stop,) = [e for e in j.events(kind="action") if e.summary.startswith("stop")]
    assert stop.detail["decided_after_s"] <= 1.0


def test_the_stop_lands_within_a_second_of_last_work_plus_timeout(
    jupyter: LocalServer, tmp_path: Path
) -> None:
    terminal_running(jupyter, nohup_busy(3))
    job_end = datetime.now(timezone.utc).timestamp() + 3
    journal = tmp_path / "j.sqlite3"
    assert watch(jupyter, "--idle-timeout", "5s", "--startup-grace", "0", "--journal", str(journal)) == 0
    with Journal(journal) as j:
        (stop,) = [e for e in j.events(kind="action") if e.summary.startswith("stop")]
    assert stop.stop_at is not None and stop.detail["decided_after_s"] <= 1.0
    # The work clock's end is within a sample (0.5 s at a 5 s timeout) of the job's real end.
    assert abs(stop.stop_at.timestamp() - (job_end + 5)) <= 1.0, (stop.stop_at, decisions(journal))


def write_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_kernel_used_and_shut_down_between_probes_moves_the_stop(
    jupyter: LocalServer, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite3"
    watcher = background_watch(
        jupyter, "--idle-timeout", "8s", "--startup-grace", "0", "--journal", str(journal)
    )
    release = tmp_path / "release"
    run: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: journal.exists() and decisions(journal), timeout_s=20, what="the first decision")
        # A kernel started after the first probe, busy until the agent has seen it busy (a kernel
        # that lives within one probe interval goes unseen, as the README says), then shut down
        # well before the deadline probe, which finds no kernel at all.
        wait_cell = (
            "import os, time\nend = time.time() + 60\n"
            f"while not os.path.exists({str(release)!r}) and time.time() < end: time.sleep(0.02)"
        )
        nb = write_notebook(tmp_path / "work.ipynb", "x = 1", wait_cell, "print(x)")
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lamplighter",
                "run",
                "notebook",
                str(nb),
                "--upload",
                "--url",
                jupyter.url,
            ],
            env={**os.environ, "LAMPLIGHTER_TOKEN": jupyter.token},
            stderr=subprocess.PIPE,
            text=True,
        )
        (seen_busy,) = wait_until(
            lambda: [e for e in decision_events(journal) if " busy since " in e.summary][:1],
            timeout_s=60,
            what="the agent to see the kernel busy",
        )
        release.touch()
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr
        assert get(jupyter, "api/kernels") == []
        assert watcher.wait(40) == 0
    finally:
        for process in (run, watcher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
    first = decision_events(journal)[0]
    with Journal(journal) as j:
        (stop,) = [e for e in j.events(kind="action") if e.summary.startswith("stop")]
    assert stop.idle_since is not None and first.idle_since is not None
    # Stopped 8 s after the kernel's work, not 8 s after the server started: the deadline moved to
    # when the agent last saw the kernel at work at the earliest, though it was gone by the deadline.
    assert stop.idle_since >= seen_busy.at, (stop.idle_since, seen_busy)
    assert stop.idle_since > first.idle_since, (stop.idle_since, first)


def kernel_until_idle(server: LocalServer) -> datetime:
    """Start a kernel and open its websocket until it is idle (a kernel stays 'starting' until then)."""
    headers = {"Authorization": f"token {server.token}"}
    kernel = httpx.post(
        server.url + "api/kernels", headers=headers, json={"name": "python3"}, timeout=10
    ).json()
    ws_url = server.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"
    with connect(ws_url, additional_headers=headers):
        model = wait_until(
            lambda: (m := get(server, f"api/kernels/{kernel['id']}"))["execution_state"] == "idle" and m,
            timeout_s=30,
            what="the kernel to be idle",
        )
    return parse_timestamp(get(server, f"api/kernels/{model['id']}")["last_activity"])


def test_a_kernel_born_after_the_first_probe_is_culled_on_time(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    watcher = background_watch(
        jupyter, "--idle-timeout", "60s", "--kernel-timeout", "3s", "--journal", str(journal)
    )
    try:
        wait_until(lambda: journal.exists() and decisions(journal), timeout_s=20, what="the first decision")
        idle_at = kernel_until_idle(jupyter)
        wait_until(lambda: get(jupyter, "api/kernels") == [], timeout_s=20, what="the kernel to be culled")
        culled_after = age_s(idle_at)
    finally:
        watcher.terminate()
        watcher.wait(20)
    assert 3.0 <= culled_after <= 5.0, f"culled {culled_after:.1f} s after it went idle (kernel_timeout 3 s)"


def extension_server(server_factory: ServerFactory, journal: Path, *settings: str) -> LocalServer:
    return server_factory(
        extra_args=[
            '--ServerApp.jpserver_extensions={"lamplighter": True}',
            f"--Lamplighter.journal={journal}",
            *(f"--Lamplighter.{s}" for s in settings),
        ]
    )


def test_in_server_mode_keeps_a_nohup_job(server_factory: ServerFactory, tmp_path: Path) -> None:
    journal = tmp_path / "ext.sqlite3"
    server = extension_server(server_factory, journal, "idle_timeout=3", "startup_grace=0")
    terminal_running(server, nohup_busy(8))
    job_started = time.monotonic()
    assert server.wait_exited(40) is not None, "the server did not stop after the job ended"
    lasted = time.monotonic() - job_started
    assert lasted >= 8, f"the in-server agent stopped the server {lasted:.1f} s into an 8 s job"
    assert any("% CPU" in d for d in decisions(journal)), decisions(journal)


def test_in_server_mode_culls_an_unseen_kernel_on_time_and_remembers_it(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "ext.sqlite3"
    server = extension_server(
        server_factory, journal, "idle_timeout=60", "kernel_timeout=2", "process_signal=False"
    )
    idle_at = kernel_until_idle(server)
    wait_until(lambda: get(server, "api/kernels") == [], timeout_s=20, what="the kernel to be culled")
    assert 2.0 <= age_s(idle_at) <= 4.0, (
        f"culled {age_s(idle_at):.1f} s after it went idle (kernel_timeout 2 s)"
    )
    # The kernel is gone, but its activity is not: the deadline is measured from it, not our cull.
    status = httpx.get(
        server.url + "lamplighter/api/status", headers={"Authorization": f"token {server.token}"}, timeout=10
    ).json()
    assert parse_timestamp(status["idle_since"]).timestamp() <= idle_at.timestamp() + 0.5, status
    assert status["settings"]["process_signal"] == "False"


def test_status_is_the_agents_verdict(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    where = ("--url", jupyter.url, "--journal", str(journal))
    url = (*where, "--token", jupyter.token)
    assert cli("snooze", "2h", *where).returncode == 0
    snoozed = cli("status", "--idle-timeout", "2s", "--startup-grace", "0", *url, "--json")
    body = json.loads(snoozed.stdout)
    assert body["verdict"] == "keep" and any("snoozed until" in r for r in body["reasons"]), body
    assert cli("snooze", "off", *where).returncode == 0
    terminal_running(jupyter, nohup_busy(20))
    wait_quiet(jupyter, 2.5)
    busy = cli("status", "--idle-timeout", "2s", "--startup-grace", "0", *url)
    assert busy.returncode == 0, busy.stderr
    assert busy.stdout.startswith("KEEP: in use: pid ") and "% CPU" in busy.stdout, busy.stdout
