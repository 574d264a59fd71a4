"""``lamplighter watch`` / ``status`` / ``journal`` end to end against real Jupyter servers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from lamplighter.cli import main
from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from lamplighter.model import parse_timestamp
from tests.conftest import cli, watch
from tests.ports import refused_port
from tests.waiting import wait_until


def api(server: LocalServer, method: str, path: str, **kw: object) -> httpx.Response:
    """A request as a user's client makes it; GETs are untracked so the tests' own polling is no activity."""
    headers = {"Authorization": f"token {server.token}"}
    params = {"no_track_activity": "1"} if method == "GET" else {}
    return httpx.request(method, server.url + path, headers=headers, params=params, timeout=10, **kw)  # type: ignore[arg-type]


def test_idle_app_is_stopped_within_a_second_of_its_deadline(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    code = watch(jupyter, "--idle-timeout", "3s", "--journal", str(journal))
    assert code == 0
    assert jupyter.wait_exited(10) is not None
    with Journal(journal) as j:
        stop = j.events(kind="action")[-1]
        decisions = j.events(kind="decision")
    assert stop.verdict == "stopped"
    # When lamplighter acted; the server's own shutdown time after that is measured in bench/.
    assert 0 <= stop.detail["decided_after_s"] < 1.0
    assert "idle for" in stop.detail["reasons"][0]
    assert decisions[0].stop_at is not None


def test_busy_kernel_keeps_the_app_past_the_timeout(jupyter: LocalServer, tmp_path: Path) -> None:
    kernel = api(jupyter, "POST", "api/kernels", json={"name": "python3"}).json()
    ws_url = jupyter.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"
    # A cell that runs longer than the idle timeout, sent over a raw websocket (then closed).
    with connect(ws_url, additional_headers={"Authorization": f"token {jupyter.token}"}) as ws:
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": "m1",
                        "msg_type": "execute_request",
                        "session": "s",
                        "username": "t",
                        "version": "5.3",
                        "date": "2026-01-01T00:00:00Z",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {"code": "import time; time.sleep(6)", "silent": False},
                }
            )
        )
        wait_until(
            lambda: api(jupyter, "GET", f"api/kernels/{kernel['id']}").json()["execution_state"] == "busy",
            timeout_s=15,
            what="the cell to start",
        )
    started = time.monotonic()
    code = watch(
        jupyter, "--idle-timeout", "2s", "--busy-recheck", "0.5s", "--journal", str(tmp_path / "j.sqlite3")
    )
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed >= 5.0, "stopped while the cell was still running"
    with Journal(tmp_path / "j.sqlite3") as j:
        reasons = [e.summary for e in j.events(kind="decision")]
    assert any("busy since" in r for r in reasons)


def test_terminal_output_keeps_the_app(jupyter: LocalServer, tmp_path: Path) -> None:
    # A terminal whose program prints every 0.3 s for 4 s: pty output moves its last_activity.
    api(
        jupyter,
        "POST",
        "api/terminals",
        json={
            "shell_command": ["bash", "-c", "for i in $(seq 13); do echo tick; sleep 0.3; done; sleep 600"]
        },
    )
    started = time.monotonic()
    code = watch(jupyter, "--idle-timeout", "2s", "--journal", str(tmp_path / "j.sqlite3"))
    assert code == 0
    assert time.monotonic() - started >= 4.5


def test_open_connection_keeps_the_app_when_counted(jupyter: LocalServer, tmp_path: Path) -> None:
    kernel = api(jupyter, "POST", "api/kernels", json={"name": "python3"}).json()
    ws_url = jupyter.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"
    release = threading.Event()

    def hold_open() -> None:
        with connect(ws_url, additional_headers={"Authorization": f"token {jupyter.token}"}):
            release.wait(4)

    holder = threading.Thread(target=hold_open)
    holder.start()
    try:
        wait_until(
            lambda: api(jupyter, "GET", "api/status").json()["connections"] >= 1,
            timeout_s=10,
            what="the websocket to count as a connection",
        )
        started = time.monotonic()
        code = watch(
            jupyter,
            "--idle-timeout",
            "2s",
            "--count-connections",
            "--busy-recheck",
            "0.5s",
            "--journal",
            str(tmp_path / "j.sqlite3"),
        )
    finally:
        release.set()
        holder.join()
    assert code == 0
    assert time.monotonic() - started >= 3.5


def test_ignored_connection_does_not_keep_the_app(
    jupyter: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = api(jupyter, "POST", "api/kernels", json={"name": "python3"}).json()
    ws_url = jupyter.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"

    def stop_verdict() -> dict[str, Any] | None:
        capsys.readouterr()
        code = main(
            [
                "status",
                "--url",
                jupyter.url,
                "--token",
                jupyter.token,
                "--idle-timeout",
                "1s",
                "--startup-grace",
                "0",
                "--json",
                "--journal",
                str(tmp_path / "j.sqlite3"),
            ]
        )
        assert code == 0
        verdict: dict[str, Any] = json.loads(capsys.readouterr().out)
        return verdict if verdict["verdict"] == "stop" else None

    with connect(ws_url, additional_headers={"Authorization": f"token {jupyter.token}"}):
        wait_idle(jupyter)
        # The open connection must not hold the verdict off once the idle second has passed.
        status = wait_until(
            stop_verdict, timeout_s=10, poll_s=0.2, what="a stop verdict despite the open connection"
        )
    assert any("not counted (ignore_connections)" in r for r in status["reasons"])


def wait_idle(server: LocalServer) -> None:
    def idle() -> bool:
        kernels = api(server, "GET", "api/kernels").json()
        return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)

    wait_until(idle, timeout_s=20, what="the kernels to become idle")


def test_restart_keeps_remembered_activity(
    jupyter: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = str(tmp_path / "j.sqlite3")
    kernel = api(jupyter, "POST", "api/kernels", json={"name": "python3"}).json()
    seen = parse_timestamp(kernel["last_activity"])
    assert (
        main(["watch", "--once", "--url", jupyter.url, "--token", jupyter.token, "--journal", journal]) == 0
    )
    api(jupyter, "DELETE", f"api/kernels/{kernel['id']}")
    capsys.readouterr()
    assert (
        main(["status", "--json", "--url", jupyter.url, "--token", jupyter.token, "--journal", journal]) == 0
    )
    status = json.loads(capsys.readouterr().out)
    # Without memory the kernel's activity would be lost and the app measured from its start.
    assert parse_timestamp(status["idle_since"]) >= seen
    assert any("remembered" in r for r in status["reasons"])


def test_unreachable_server_is_not_idle(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}/"
        assert (
            main(
                [
                    "watch",
                    "--once",
                    "--url",
                    url,
                    "--token",
                    "t",
                    "--idle-timeout",
                    "1s",
                    "--journal",
                    str(journal),
                ]
            )
            == 3  # cron must see that nothing was read (EXIT_REMOTE), though the verdict is journaled
        )
        with Journal(journal) as j:
            (decision,) = j.events(kind="decision")
        assert decision.verdict == "skip"
        assert "cannot connect" in decision.summary
        result = cli("status", "--url", url, "--token", "t", "--journal", str(journal))
        assert result.returncode == 3
        assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr


def test_wrong_token_and_bad_url_fail_clearly(jupyter: LocalServer, tmp_path: Path) -> None:
    wrong = cli(
        "watch", "--url", jupyter.url, "--token", "not-the-token-42", "--journal", str(tmp_path / "j")
    )
    assert wrong.returncode == 3
    assert "refused our credentials" in wrong.stderr and "Traceback" not in wrong.stderr
    assert "not-the-token-42" not in wrong.stderr
    bad = cli("watch", "--url", "jupyter.example", "--journal", str(tmp_path / "j"))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "url" in bad.stderr
    base = cli(
        "status", "--url", jupyter.url + "nope/", "--token", jupyter.token, "--journal", str(tmp_path / "j")
    )
    assert base.returncode == 3 and "base URL" in base.stderr
    setting = cli("watch", "--url", jupyter.url, "--idle-timeout", "soon")
    assert setting.returncode == 2 and "idle_timeout" in setting.stderr


def test_watching_creates_no_activity(jupyter: LocalServer, tmp_path: Path) -> None:
    kernel = api(jupyter, "POST", "api/kernels", json={"name": "python3"}).json()
    ws_url = jupyter.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"
    with connect(ws_url, additional_headers={"Authorization": f"token {jupyter.token}"}):
        wait_idle(jupyter)
    # The kernel's own start-up messages may still move its activity: the baseline is taken once it holds
    # still for half a second.
    seen: list[tuple[str, str]] = []

    def settled() -> tuple[str, str] | None:
        now = (
            api(jupyter, "GET", "api/status").json()["last_activity"],
            api(jupyter, "GET", f"api/kernels/{kernel['id']}").json()["last_activity"],
        )
        seen.append(now)
        return now if len(seen) > 1 and seen[-2] == now else None

    before, kernel_before = wait_until(
        settled, timeout_s=10, poll_s=0.5, what="the kernel's activity to settle"
    )
    for _ in range(3):
        assert (
            main(["status", "--url", jupyter.url, "--token", jupyter.token, "--journal", str(tmp_path / "j")])
            == 0
        )
        assert (
            main(
                [
                    "watch",
                    "--once",
                    "--url",
                    jupyter.url,
                    "--token",
                    jupyter.token,
                    "--journal",
                    str(tmp_path / "j"),
                ]
            )
            == 0
        )
    assert api(jupyter, "GET", "api/status").json()["last_activity"] == before
    assert api(jupyter, "GET", f"api/kernels/{kernel['id']}").json()["last_activity"] == kernel_before


def test_cookie_and_xsrf_auth_stops_the_server(jupyter: LocalServer, tmp_path: Path) -> None:
    with httpx.Client() as client:
        client.get(jupyter.url + "tree", params={"token": jupyter.token}, follow_redirects=True)
        cookies = "; ".join(
            f"{c.name}={c.value}" for c in client.cookies.jar if c.name.startswith("username")
        )
    assert (
        main(
            [
                "watch",
                "--url",
                jupyter.url,
                "--cookies",
                cookies,
                "--idle-timeout",
                "1s",
                "--journal",
                str(tmp_path / "j"),
            ]
        )
        == 0
    )
    assert jupyter.wait_exited(10) is not None


def test_kernel_and_terminal_culling(jupyter: LocalServer, tmp_path: Path) -> None:
    kernel = api(jupyter, "POST", "api/kernels", json={"name": "python3"}).json()
    api(jupyter, "POST", "api/terminals")
    ws_url = jupyter.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels"
    with connect(ws_url, additional_headers={"Authorization": f"token {jupyter.token}"}):
        wait_idle(jupyter)  # a REST-started kernel stays 'starting' until a client connects
    journal = tmp_path / "j"
    code = watch(
        jupyter,
        "--idle-timeout",
        "4s",
        "--kernel-timeout",
        "1s",
        "--terminal-timeout",
        "1s",
        "--journal",
        str(journal),
    )
    assert code == 0
    with Journal(journal) as j:
        summaries = [e.summary for e in j.events(kind="action")]
    assert summaries[0].startswith(("shut down kernel", "shut down terminal"))
    assert any(s.startswith(f"shut down kernel {kernel['id']}") for s in summaries)
    assert any(s.startswith("shut down terminal 1") for s in summaries)
    assert summaries[-1].startswith("stop stopped")


def test_a_terminal_the_server_cannot_close_is_culled_once_and_reported(
    jupyter: LocalServer, tmp_path: Path
) -> None:
    # As under `nohup jupyter lab &`: the shell's child ignores SIGHUP, so the server's shutdown ends
    # the shell, answers 204, and the child keeps the terminal open and listed.
    api(
        jupyter,
        "POST",
        "api/terminals",
        json={"shell_command": ["bash", "-c", "trap '' HUP; sleep 600; true"]},
    )
    journal = tmp_path / "j"
    code = watch(
        jupyter,
        "--idle-timeout",
        "9s",
        "--terminal-timeout",
        "1s",
        "--no-process-signal",
        "--journal",
        str(journal),
    )
    assert code == 0
    with Journal(journal) as j:
        culls = [e for e in j.events(kind="action") if e.detail.get("cull") == "terminal"]
    assert [e.verdict for e in culls] == ["done", "failed"], [e.summary for e in culls]
    assert culls[0].summary == "shut down terminal 1"
    assert culls[1].summary.startswith("terminal 1 is still open"), culls[1].summary
    assert "ignore SIGHUP" in culls[1].summary
