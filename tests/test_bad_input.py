"""Bad input gets one line and a documented exit status: URLs, absurd values, hostile servers, journals.

Every case runs the real CLI in a subprocess, the way cron or a lifecycle script does, and checks the
exit status, that stderr is a single line naming the problem, and that no traceback and no secret leaks.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from lamplighter.model import format_time
from tests.conftest import cli
from tests.ports import refused_port

Handler = Callable[[str], tuple[int, str, str]]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """stderr, asserted to be exactly one line without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def verdict_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one 'lamplighter: ...' line among the log lines (a signal thread may log after it)."""
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("lamplighter: ")]
    return line


class HostileServer:
    """A real HTTP server on loopback whose answers a test chooses: a proxy's login page, odd JSON."""

    def __init__(self, handler: Handler) -> None:
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = outer.handler(self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.handler = handler
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL where nothing listens, held so for the whole test."""
    with refused_port() as port:
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def hostile() -> Iterator[Callable[[Handler], HostileServer]]:
    servers: list[HostileServer] = []

    def start(handler: Handler) -> HostileServer:
        servers.append(HostileServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def jupyter_api(kernel_activity: str) -> Handler:
    """A Jupyter API whose one kernel reports ``kernel_activity`` as its last activity."""
    now = datetime.now(timezone.utc).isoformat()

    def answer(path: str) -> tuple[int, str, str]:
        route = path.split("?")[0]
        bodies: dict[str, object] = {
            "/api/status": {"started": now, "last_activity": now, "connections": 0, "kernels": 1},
            "/api/kernels": [
                {
                    "id": "k1",
                    "name": "python3",
                    "execution_state": "busy",
                    "last_activity": kernel_activity,
                    "connections": 1,
                }
            ],
            "/api/terminals": [],
            "/api/sessions": [],
        }
        if route not in bodies:
            return 404, "application/json", "{}"
        return 200, "application/json", json.dumps(bodies[route])

    return answer


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://[::1", "url"),
        ("http://127.0.0.1:99999/", "port"),
        ("http://127.0.0.1:0/", "port"),
        ("http://alice:pw-s3cr3t-77@127.0.0.1:8888/", "user info"),
        ("http://127.0.0.1:8888/?authToken=s3cr3t-presigned-77", "authToken"),
    ],
)
def test_bad_urls_are_one_line_exit_2(url: str, needle: str, tmp_path: Path) -> None:
    result = cli("status", "--url", url, "--journal", str(tmp_path / "j"))
    line = one_line(result)
    assert result.returncode == 2
    assert needle in line
    assert "s3cr3t" not in result.stderr + result.stdout


def test_credentials_in_the_url_are_never_journaled(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    result = cli(
        "watch", "--once", "--action", "none", "--url", f"{jupyter.url}lab?token={jupyter.token}",
        "--journal", str(journal),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert jupyter.token not in journal.read_bytes().decode(errors="replace")
    status = cli(
        "status", "--json", "--url", f"{jupyter.url}?token={jupyter.token}", "--journal", str(journal)
    )
    assert status.returncode == 0, status.stderr
    assert jupyter.token not in status.stdout
    assert json.loads(status.stdout)["settings"]["url"] == jupyter.url


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--idle-timeout", "99999999999999999999"), "idle_timeout"),
        (("--idle-timeout", "100000000d"), "idle_timeout"),
        (("--busy-recheck", "100000000d"), "busy_recheck"),
        (("--busy-recheck", "999999999"), "busy_recheck"),
        (("--request-timeout", "0"), "request_timeout"),
        (("--heartbeat-interval", "0"), "heartbeat_interval"),
        (("--editor-port", "70000"), "editor_port"),
        (("--cpu-threshold", "nan"), "cpu_threshold"),
    ],
)
def test_out_of_range_flags_are_one_line_exit_2(
    flags: tuple[str, str], needle: str, tmp_path: Path, refused_url: str
) -> None:
    result = cli("status", "--url", refused_url, *flags, "--journal", str(tmp_path / "j"))
    line = one_line(result)
    assert result.returncode == 2
    assert needle in line and "between" in line


@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "-1"])
def test_out_of_range_toml_and_env_are_one_line_exit_2(value: str, tmp_path: Path, refused_url: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"idle_timeout = {value}\n")
    url = refused_url
    from_file = cli("status", "--url", url, "--config", str(config), "--journal", str(tmp_path / "j"))
    assert from_file.returncode == 2 and "idle_timeout" in one_line(from_file)
    env = {**_env(), "LAMPLIGHTER_BUSY_RECHECK": value}
    from_env = cli("status", "--url", url, "--journal", str(tmp_path / "j"), env=env)
    assert from_env.returncode == 2 and "LAMPLIGHTER_BUSY_RECHECK" in one_line(from_env)


def test_help_shows_each_range() -> None:
    result = cli("watch", "--help")
    text = " ".join(result.stdout.split())
    assert "range 100ms to 10m" in text  # --request-timeout
    assert "range 1s to 365d" in text  # --idle-timeout
    assert "range 1 to 65535" in text  # --editor-port


# -- hostile servers -----------------------------------------------------------------------------


def test_kernel_active_in_year_9999_is_a_probe_error_not_a_crash(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path
) -> None:
    server = hostile(jupyter_api("9999-12-31T23:59:59Z"))
    status = cli("status", "--url", server.url, "--token", "t", "--journal", str(tmp_path / "j"))
    assert status.returncode == 3
    assert "last_activity" in one_line(status)
    journal = tmp_path / "w.sqlite3"
    watch = cli("watch", "--once", "--url", server.url, "--token", "t", "--journal", str(journal))
    assert watch.returncode == 3, watch.stderr
    assert "Traceback" not in watch.stderr
    with Journal(journal) as j:
        (decision,) = j.events(kind="decision")
    assert decision.verdict == "skip"


def test_kernel_active_a_year_ahead_is_malformed(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path
) -> None:
    ahead = (datetime.now(timezone.utc) + timedelta(days=366)).isoformat()
    server = hostile(jupyter_api(ahead))
    status = cli("status", "--url", server.url, "--token", "t", "--journal", str(tmp_path / "j"))
    assert status.returncode == 3 and "future" in one_line(status)


# -- exit statuses -------------------------------------------------------------------------------


def test_watch_once_exits_3_when_nothing_answers(tmp_path: Path, refused_url: str) -> None:
    journal = tmp_path / "j.sqlite3"
    result = cli("watch", "--once", "--url", refused_url, "--token", "t",
                 "--journal", str(journal))  # fmt: skip
    assert result.returncode == 3
    assert "cannot connect" in verdict_line(result)
    with Journal(journal) as j:
        assert [e.verdict for e in j.events(kind="decision")] == ["skip"]  # nothing recorded is lost


def test_watch_once_exits_3_on_a_proxy_login_page(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path
) -> None:
    server = hostile(lambda path: (200, "text/html", "<html><form>Sign in</form></html>"))
    result = cli("watch", "--once", "--url", server.url, "--token", "t", "--journal", str(tmp_path / "j"))
    assert result.returncode == 3
    assert "not JSON" in verdict_line(result)


@pytest.mark.parametrize("once", [True, False])
def test_a_refused_first_probe_exits_3_and_is_journaled_as_skip(
    jupyter: LocalServer, tmp_path: Path, once: bool
) -> None:
    journal = tmp_path / "j.sqlite3"
    result = cli("watch", *(["--once"] if once else []), "--url", jupyter.url, "--token", "wrong-token-4",
                 "--journal", str(journal))  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "403" in result.stderr, result.stderr
    with Journal(journal) as j:
        (refused,) = j.events(kind="decision")
    assert refused.verdict == "skip" and "403" in refused.summary, refused
    assert "wrong-token-4" not in json.dumps(refused.to_dict())


def test_watch_once_exits_0_when_the_probe_worked(jupyter: LocalServer, tmp_path: Path) -> None:
    result = cli("watch", "--once", "--action", "none", "--url", jupyter.url, "--token", jupyter.token,
                 "--journal", str(tmp_path / "j"))  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", ["not-sqlite", "cannot-create"])
def test_unusable_journal_is_a_bad_setting(kind: str, tmp_path: Path, refused_url: str) -> None:
    if kind == "not-sqlite":
        journal = tmp_path / "journal.sqlite3"
        journal.write_text("this is not a database, " * 100)
    else:
        blocker = tmp_path / "file"
        blocker.write_text("")
        journal = blocker / "journal.sqlite3"
    result = cli("watch", "--once", "--url", refused_url, "--token", "t",
                 "--journal", str(journal))  # fmt: skip
    line = one_line(result)
    assert result.returncode == 2
    assert "journal" in line
    if kind == "not-sqlite":
        assert journal.read_text().startswith("this is not a database")  # nothing recorded is lost


# -- times ---------------------------------------------------------------------------------------


def test_times_carry_a_date_unless_today() -> None:
    now = datetime(2026, 11, 22, 14, 0, tzinfo=timezone.utc)
    assert format_time(now + timedelta(hours=2), now=now) == "16:00:00 UTC"
    assert format_time(now + timedelta(hours=20), now=now) == "2026-11-23 10:00:00 UTC"
    assert format_time(now - timedelta(days=400), now=now) == "2025-10-18 14:00:00 UTC"


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_watch_once_exits_1_when_the_stop_failed(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    common = (
        "--url",
        jupyter.url,
        "--token",
        jupyter.token,
        "--idle-timeout",
        "1s",
        "--journal",
        str(journal),
    )
    deadline = time.monotonic() + 30
    while True:  # until the server is past its idle deadline (it started a moment ago)
        status = cli("status", "--json", *common)
        if json.loads(status.stdout)["verdict"] == "stop":
            break
        assert time.monotonic() < deadline, status.stdout
    result = cli("watch", "--once", *common, "--action", "command", "--command", "echo refused; exit 7")
    assert result.returncode == 1, result.stderr
    with Journal(journal) as j:
        (stop,) = j.events(kind="action")
    assert stop.verdict == "failed" and "exited 7: refused" in stop.summary
