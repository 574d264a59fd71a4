"""``watch --native-guard`` against the real ``jupyter-activity-monitor-extension`` in a real jupyter_server.

SageMaker's native idle shutdown reads ``GET /api/idle``. Left alone, a silent busy cell or a ``nohup``
job leaves that clock where the kernel's or terminal's last output put it; with the guard it advances
while lamplighter's work clock runs, and stops advancing once the work ends. The extension's file is
``/tmp/.sagemaker-last-active-timestamp``, a default argument of its reader; each test server moves it
into the test's folder with a config file (the one line below), so parallel runs share nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.model import Action, Decision, Memory, parse_timestamp
from lamplighter.sagemaker.native_guard import NativeGuard, format_native_timestamp, read_native_timestamp
from lamplighter.settings import load_settings
from tests.test_running_work_paths import terminal_running
from tests.waiting import wait_until

_EXTENSION_FORMAT = "%Y-%m-%dT%H:%M:%S.%fz"  # what GET /api/idle answers (the extension's own format)
_FAST = ["--idle-timeout", "3s", "--busy-recheck", "0.3s", "--heartbeat-interval", "1s"]


@pytest.fixture
def native(tmp_path: Path) -> Iterator[tuple[LocalServer, Path]]:
    """A real Jupyter server running the extension, its timestamp file moved to ``tmp_path``."""
    stamp = tmp_path / "last-active-timestamp"
    workdir = tmp_path / "server"
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "jupyter_server_config.py").write_text(
        "from jupyter_activity_monitor_extension import idle_status_detector\n"
        "idle_status_detector.LocalFileActiveTimestampChecker.read_last_active_timestamp.__defaults__ = "
        f"({str(stamp)!r},)\n"
    )
    server = start_local_server(
        workdir, extra_args=['--ServerApp.jpserver_extensions={"jupyter_activity_monitor_extension": True}']
    )
    try:
        yield server, stamp
    finally:
        server.stop()


def _get(server: LocalServer, path: str) -> Any:
    answer = httpx.get(
        server.url + path,
        headers={"Authorization": f"token {server.token}"},
        params={"no_track_activity": 1},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()


def _idle(server: LocalServer) -> datetime:
    """What SageMaker's idle shutdown reads: the extension's ``lastActiveTimestamp``."""
    stamp = _get(server, "api/idle")["lastActiveTimestamp"]
    return datetime.strptime(stamp, _EXTENSION_FORMAT).replace(tzinfo=timezone.utc)


def _guarded_watch(server: LocalServer, tmp_path: Path, stamp: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lamplighter",
            "watch",
            "--url",
            server.url,
            "--native-guard",
            "--native-idle-file",
            str(stamp),
            "--action",
            "none",
            "--journal",
            str(tmp_path / "journal.sqlite3"),
            "--heartbeat",
            str(tmp_path / "heartbeat.json"),
            *_FAST,
            *args,
        ],
        env={**os.environ, "LAMPLIGHTER_TOKEN": server.token},
    )


def _heartbeat(tmp_path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((tmp_path / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _wait_agent_idle_past(tmp_path: Path, moment: datetime) -> None:
    """Until the agent's heartbeat, written after ``moment``, says the app is idle (the work has ended)."""

    def seen() -> bool:
        beat = _heartbeat(tmp_path)
        return (
            beat is not None
            and beat.get("idle_since") is not None
            and parse_timestamp(beat["updated_at"]) >= moment
        )

    wait_until(seen, timeout_s=30, what="the agent to see the app idle")


def _stop(watcher: subprocess.Popen[bytes]) -> None:
    if watcher.poll() is None:
        watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(30) == 0


def _culled(tmp_path: Path, kind: str) -> bool:
    """A real shutdown journaled; not the agent's own cull under ``--action none`` ("would shut down")."""
    with Journal(tmp_path / "journal.sqlite3") as journal:
        return any(
            f"shut down {kind}" in e.summary and not e.summary.startswith("would ")
            for e in journal.events(kind="action")
        )


def _execute(ws: Any, code: str) -> None:
    header = {
        "msg_id": "m1",
        "msg_type": "execute_request",
        "session": "s",
        "username": "t",
        "version": "5.3",
    }
    content = {"code": code, "silent": False, "store_history": True}
    ws.send(
        json.dumps(
            {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell", "content": content}
        )
    )


def test_a_silent_cell_keeps_the_native_clock_fresh_until_it_ends(
    native: tuple[LocalServer, Path], tmp_path: Path
) -> None:
    server, stamp = native
    headers = {"Authorization": f"token {server.token}"}
    # A notebook session (the extension only counts kernels that have one) with a silent 7 s cell.
    session = httpx.post(
        server.url + "api/sessions",
        headers=headers,
        json={"path": "silent.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
        timeout=30,
    ).json()
    kernel_id = session["kernel"]["id"]
    kernel_ws = server.url.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    with connect(kernel_ws, additional_headers=headers) as ws:
        wait_until(
            lambda: _get(server, f"api/kernels/{kernel_id}")["execution_state"] == "idle",
            timeout_s=30,
            what="the kernel to start",
        )
        watcher = _guarded_watch(server, tmp_path, stamp, "--no-process-signal")
        try:
            _execute(ws, "import time; time.sleep(7)")
            wait_until(
                lambda: _get(server, f"api/kernels/{kernel_id}")["execution_state"] == "busy",
                timeout_s=15,
                what="the cell to start",
            )
            quiet_since = parse_timestamp(_get(server, f"api/kernels/{kernel_id}")["last_activity"])

            # While the cell runs silently, /api/idle moves past the kernel's own last activity.
            wait_until(
                lambda: _idle(server) >= quiet_since + timedelta(seconds=2),
                timeout_s=15,
                what="/api/idle to advance while the cell runs",
            )
            assert _get(server, f"api/kernels/{kernel_id}")["execution_state"] == "busy"
            assert parse_timestamp(_get(server, f"api/kernels/{kernel_id}")["last_activity"]) == quiet_since

            wait_until(
                lambda: _get(server, f"api/kernels/{kernel_id}")["execution_state"] == "idle",
                timeout_s=30,
                what="the cell to end",
            )
            ended = datetime.now(timezone.utc)
            ws.close()
            # Once the agent has seen the end, the clock stops: two readings some checks apart agree,
            # and it stands near the end of the work, not later.
            _wait_agent_idle_past(tmp_path, ended + timedelta(seconds=1))
            first = _idle(server)
            _wait_agent_idle_past(tmp_path, datetime.now(timezone.utc) + timedelta(seconds=2))
            assert _idle(server) == first
            assert first <= ended + timedelta(seconds=2)
            # The idle kernel is culled (kernel_timeout defaults to the idle timeout under the guard).
            wait_until(lambda: _culled(tmp_path, "kernel"), timeout_s=30, what="the idle kernel to be culled")
            assert _get(server, "api/sessions") == []
            assert _idle(server) == first
        finally:
            _stop(watcher)


def test_a_nohup_job_keeps_the_native_clock_fresh_until_it_ends(
    native: tuple[LocalServer, Path], tmp_path: Path
) -> None:
    server, stamp = native
    before = _idle(server)  # the first request: nothing ran yet
    marker = f"native-guard-job-{secrets.token_hex(4)}"  # other tests on the machine run the same loop
    busy = f"import time\n# {marker}\nend=time.time()+7\nwhile time.time()<end: pass"
    # `exec`: the shell's last command is the session leader, so the terminal's shutdown reaches it also
    # where SIGHUP is ignored from the start (a server, or this test run, under nohup).
    terminal = terminal_running(
        server, f"nohup {sys.executable} -c '{busy}' >/dev/null 2>&1 & exec sleep 600"
    )
    watcher = _guarded_watch(
        server, tmp_path, stamp, "--process-window", "1.5s", "--process-sample-interval", "0.2s"
    )
    try:
        quiet_since = parse_timestamp(next(t for t in _get(server, "api/terminals"))["last_activity"])
        wait_until(
            lambda: _idle(server) >= max(before, quiet_since) + timedelta(seconds=2),
            timeout_s=20,
            what="/api/idle to advance while the job runs",
        )
        # The terminal printed nothing meanwhile: the file is what moved the clock.
        assert parse_timestamp(_get(server, "api/terminals")[0]["last_activity"]) == quiet_since
        assert read_native_timestamp(stamp) is not None

        def job_running() -> bool:
            return marker in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout

        wait_until(lambda: not job_running(), timeout_s=30, what="the job to end")
        ended = datetime.now(timezone.utc)
        _wait_agent_idle_past(tmp_path, ended + timedelta(seconds=1))
        first = _idle(server)
        _wait_agent_idle_past(tmp_path, datetime.now(timezone.utc) + timedelta(seconds=2))
        assert _idle(server) == first
        assert first <= ended + timedelta(seconds=2)
        # The terminal, idle and no longer running work, is closed.
        wait_until(lambda: _culled(tmp_path, "terminal"), timeout_s=30, what="the idle terminal to close")

        # Shut down; the server lists it until its pty reads EOF (never, while a process that ignores
        # SIGHUP holds it); the processes still on a tty are in the failure message.
        def listed_no_more() -> bool:
            return terminal not in {t["name"] for t in _get(server, "api/terminals")}

        def on_a_tty() -> str:
            ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,tty,args"], capture_output=True, text=True)
            return "\n".join(line for line in ps.stdout.splitlines() if " pts/" in line)

        try:
            wait_until(listed_no_more, timeout_s=30, what="the closed terminal to leave the server's list")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprocesses on a tty:\n{on_a_tty()}") from None
    finally:
        _stop(watcher)


def test_nothing_running_writes_nothing(native: tuple[LocalServer, Path], tmp_path: Path) -> None:
    server, stamp = native
    watcher = _guarded_watch(server, tmp_path, stamp, "--no-process-signal")
    try:
        _wait_agent_idle_past(tmp_path, datetime.now(timezone.utc) + timedelta(seconds=2))
        assert not stamp.exists()
    finally:
        _stop(watcher)


def _decision(last_work: datetime | None) -> Decision:
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    return Decision(
        action=Action.KEEP,
        reason="r",
        reasons=("r",),
        idle_since=None,
        stop_at=None,
        next_check_at=now,
        memory=Memory(last_work=last_work),
    )


def test_the_guard_writes_only_new_work_and_never_moves_the_clock_back(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp"
    t0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    guard = NativeGuard(stamp, since=t0)
    guard.feed(_decision(None))
    guard.feed(_decision(t0))  # remembered from before the agent started: not activity now
    assert not stamp.exists()
    guard.feed(_decision(t0 + timedelta(seconds=5)))
    # The extension's own reader parses what the guard wrote (naive UTC, as it compares).
    with warnings.catch_warnings():  # the extension's handler uses jupyter_server's deprecated @json_errors
        warnings.simplefilter("ignore", DeprecationWarning)
        from jupyter_activity_monitor_extension.idle_status_detector import (  # type: ignore[import-untyped]
            LocalFileActiveTimestampChecker,
        )
    read = LocalFileActiveTimestampChecker().read_last_active_timestamp(str(stamp))
    assert read == datetime(2026, 1, 1, 12, 0, 5)
    # Another writer ahead of us is left alone.
    stamp.write_text(format_native_timestamp(t0 + timedelta(minutes=1)))
    guard.feed(_decision(t0 + timedelta(seconds=10)))
    assert read_native_timestamp(stamp) == t0 + timedelta(minutes=1)
    assert guard.writes == 1
    # Whole seconds keep their fraction: the extension's strptime needs it.
    assert format_native_timestamp(t0) == "2026-01-01T12:00:00.000000Z"


def test_the_guard_culls_by_default_and_refuses_code_editor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings({"native_guard": "true", "idle_timeout": "20m"}, env={})
    assert settings.kernel_timeout == settings.terminal_timeout == timedelta(minutes=20)
    own = load_settings({"native_guard": "true", "kernel_timeout": "5m"}, env={})
    assert own.kernel_timeout == timedelta(minutes=5)
    assert load_settings({}, env={}).kernel_timeout is None
    from lamplighter.cli import main

    code = main(["watch", "--app-type", "code-editor", "--native-guard", "--editor-port", "1", "--once"])
    assert code == 2
    assert "native_guard: Jupyter apps only" in capsys.readouterr().err
