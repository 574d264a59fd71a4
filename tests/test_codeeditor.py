"""The Code Editor probe against real files, a real editor-like process and a fake code-server ``/healthz``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from lamplighter.errors import ConnectFailed, MalformedAnswer, RemoteError, Unsupported
from lamplighter.model import Clock
from lamplighter.platforms.codeeditor import CodeEditorOptions, CodeEditorProbe
from tests.ports import start_http_server

UTC = timezone.utc
AGENT_STARTED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def at(moment: datetime) -> float:
    return moment.timestamp()


def touch(path: Path, moment: datetime, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (at(moment), at(moment)))


@pytest.fixture
def layout(tmp_path: Path) -> CodeEditorOptions:
    """The SageMaker Code Editor layout under a temporary root."""
    data = tmp_path / "sagemaker-code-editor-server-data" / "data" / "User"
    return CodeEditorOptions(
        activity_dirs=(data / "History", data / "Backups"),
        timestamp_files=(tmp_path / "tmp" / ".sagemaker-last-active-timestamp",),
    )


@pytest.fixture
def editor_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the editor server, started now."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait(10)


async def test_history_backups_and_the_timestamp_file_are_interaction(layout: CodeEditorOptions) -> None:
    history, backups = layout.activity_dirs
    stamp_file = layout.timestamp_files[0]
    t0 = datetime(2030, 1, 2, 4, 0, 0, tzinfo=UTC)
    touch(history / "-3b1c2d" / "entries.json", t0)
    touch(history / "-3b1c2d" / "AbC1.py", t0 + timedelta(minutes=5))
    touch(backups / "empty-window" / "untitled" / "Untitled-1", t0 + timedelta(minutes=7))
    # SageMaker's idle extension writes JavaScript's toISOString(); the content counts, not the mtime.
    touch(stamp_file, t0, text="2030-01-02T04:09:30.250Z")
    probe = CodeEditorProbe(layout, agent_started=AGENT_STARTED)
    snap = await probe.snapshot()
    assert snap.target == "code-editor" and snap.kernels == () and snap.terminals == ()
    by_source = {r.source: r for r in snap.readings}
    assert set(by_source) == {
        "code-editor history",
        "code-editor backups",
        "activity file .sagemaker-last-active-timestamp",
    }
    assert all(r.clock is Clock.INTERACTION and not r.active_now for r in snap.readings)
    assert by_source["code-editor history"].at == t0 + timedelta(minutes=5)
    assert (
        by_source["code-editor history"].detail
        == "History/-3b1c2d/AbC1.py modified at 2030-01-02 04:05:00 UTC"
    )
    assert by_source["code-editor backups"].at == t0 + timedelta(minutes=7)
    stamp = by_source["activity file .sagemaker-last-active-timestamp"]
    assert stamp.at == datetime(2030, 1, 2, 4, 9, 30, 250000, tzinfo=UTC)
    assert stamp.detail.endswith("says last active at 2030-01-02 04:09:30 UTC")
    assert snap.last_activity == stamp.at


async def test_missing_sources_say_so_and_odd_files_fall_back(
    layout: CodeEditorOptions, tmp_path: Path
) -> None:
    history, backups = layout.activity_dirs
    backups.mkdir(parents=True)
    (backups / "dangling").symlink_to(tmp_path / "nowhere")  # the AWS sample crashed on this
    heartbeat = tmp_path / "heartbeat"  # code-server's heartbeat file is empty: its mtime counts
    touch(heartbeat, AGENT_STARTED + timedelta(hours=1), text="")
    secret = tmp_path / "secret"
    secret.write_text("2031-01-01T00:00:00Z")
    planted = tmp_path / "planted"
    planted.symlink_to(secret)  # a symlink planted in /tmp is not followed
    options = CodeEditorOptions(
        activity_dirs=layout.activity_dirs, timestamp_files=(layout.timestamp_files[0], heartbeat, planted)
    )
    snap = await CodeEditorProbe(options, agent_started=AGENT_STARTED).snapshot()
    details = {r.source: r for r in snap.readings}
    assert details["code-editor history"].at is None
    assert details["code-editor history"].detail.endswith("History does not exist (yet)")
    assert details["code-editor backups"].at is not None  # the symlink itself, by lstat
    assert details["activity file .sagemaker-last-active-timestamp"].at is None
    assert details["activity file heartbeat"].at == AGENT_STARTED + timedelta(hours=1)
    assert details["activity file heartbeat"].detail.endswith("heartbeat modified at 2030-01-02 04:04:05 UTC")
    assert (
        details["activity file planted"].at is None
        and "cannot be read" in details["activity file planted"].detail
    )


async def test_started_is_the_editor_process_start_so_the_grace_holds(
    layout: CodeEditorOptions, editor_process: subprocess.Popen[bytes]
) -> None:
    # History left over from an earlier session: days old. The AWS sample stopped such an app at once.
    stale = datetime.now(UTC) - timedelta(days=3)
    touch(layout.activity_dirs[0] / "old" / "entries.json", stale)
    options = CodeEditorOptions(
        activity_dirs=layout.activity_dirs,
        timestamp_files=layout.timestamp_files,
        server_pid=editor_process.pid,
    )
    snap = await CodeEditorProbe(options, agent_started=AGENT_STARTED).snapshot()
    created = datetime.fromtimestamp(psutil.Process(editor_process.pid).create_time(), UTC)
    assert snap.started == created
    assert abs((datetime.now(UTC) - snap.started).total_seconds()) < 30
    assert snap.last_activity == snap.started, "stale history must not make a fresh app look idle for days"
    # Without a known editor process, the agent's start stands in (never the oldest activity file).
    snap = await CodeEditorProbe(layout, agent_started=AGENT_STARTED).snapshot()
    assert snap.started == AGENT_STARTED == snap.last_activity


async def test_started_from_the_editor_port(layout: CodeEditorOptions, tmp_path: Path) -> None:
    port, server = start_http_server(tmp_path)
    try:
        options = CodeEditorOptions(activity_dirs=(), timestamp_files=(), server_port=port)
        snap = await CodeEditorProbe(options, agent_started=AGENT_STARTED).snapshot()
        assert snap.started == datetime.fromtimestamp(psutil.Process(server.pid).create_time(), UTC)
    finally:
        server.kill()
        server.wait(10)


class _Healthz(BaseHTTPRequestHandler):
    answer: bytes = b""

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def code_server() -> Iterator[tuple[str, type[_Healthz]]]:
    """A tiny local HTTP server answering ``GET /healthz`` like code-server."""
    handler = type("Handler", (_Healthz,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/healthz", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


async def test_code_server_heartbeat(code_server: tuple[str, type[_Healthz]]) -> None:
    url, handler = code_server
    beat = datetime(2030, 1, 2, 5, 6, 7, 123000, tzinfo=UTC)
    handler.answer = json.dumps({"status": "alive", "lastHeartbeat": int(beat.timestamp() * 1000)}).encode()
    options = CodeEditorOptions(activity_dirs=(), timestamp_files=(), healthz_url=url)
    probe = CodeEditorProbe(options, agent_started=AGENT_STARTED, target="code-server")
    snap = await probe.snapshot()
    (reading,) = snap.readings
    assert reading.source == "code-server healthz" and reading.clock is Clock.INTERACTION
    assert reading.at == beat and reading.detail == "code-server heartbeat at 2030-01-02 05:06:07 UTC (alive)"
    assert snap.last_activity == beat and snap.target == "code-server"

    handler.answer = json.dumps({"status": "expired", "lastHeartbeat": 0}).encode()
    (reading,) = (await probe.snapshot()).readings
    assert reading.at is None and reading.detail == "code-server has had no heartbeat yet (expired)"


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        (lambda request: httpx.Response(200, text="<html>login</html>"), MalformedAnswer),
        (lambda request: httpx.Response(503), RemoteError),
        (lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused")), ConnectFailed),
    ],
    ids=["not-json", "http-503", "refused"],
)
async def test_an_unreadable_healthz_is_a_probe_failure(respond: object, error: type[Exception]) -> None:
    options = CodeEditorOptions(
        activity_dirs=(), timestamp_files=(), healthz_url="http://127.0.0.1:9/healthz"
    )
    probe = CodeEditorProbe(options, agent_started=AGENT_STARTED, transport=httpx.MockTransport(respond))  # type: ignore[arg-type]
    with pytest.raises(error):
        await probe.snapshot()


async def test_kernels_and_terminals_cannot_be_culled(layout: CodeEditorOptions) -> None:
    probe = CodeEditorProbe(layout, agent_started=AGENT_STARTED)
    with pytest.raises(Unsupported):
        await probe.cull_kernel("k")
    with pytest.raises(Unsupported):
        await probe.cull_terminal("1")


async def test_activity_folders_are_found_under_either_image_layout(tmp_path: Path) -> None:
    """SageMaker Distribution >= 2.4 keeps the server data in the home; older images under /opt."""
    new, old = tmp_path / "home" / "sagemaker-code-editor-server-data", tmp_path / "opt" / "server-data"
    probe = CodeEditorProbe(
        CodeEditorOptions(data_dirs=(new, old), timestamp_files=()), agent_started=AGENT_STARTED
    )
    edited = AGENT_STARTED + timedelta(minutes=5)
    touch(old / "data" / "User" / "History" / "a1" / "entries.json", edited)
    snapshot = await probe.snapshot()
    assert snapshot.last_activity == edited
    assert any("History/a1/entries.json" in r.detail for r in snapshot.readings)

    # The new layout wins as soon as it exists (looked up on every probe, not once).
    later = AGENT_STARTED + timedelta(minutes=9)
    touch(new / "data" / "User" / "Backups" / "untitled-1", later)
    assert (await probe.snapshot()).last_activity == later


def test_code_editor_data_dir_setting_reaches_the_probe(tmp_path: Path) -> None:
    from lamplighter.settings import load_settings
    from lamplighter.wiring import row_for

    settings = load_settings(
        {"platform": "jupyter", "app_type": "code-editor"},
        env={"LAMPLIGHTER_CODE_EDITOR_DATA_DIR": str(tmp_path / "data-dir")},
    )
    assert settings.code_editor_data_dir == tmp_path / "data-dir"
    row, resolved = row_for(settings)
    probe = row.probe(resolved, None)
    assert isinstance(probe, CodeEditorProbe)
    assert probe.options.data_dirs == (tmp_path / "data-dir",)
    default = row.probe(load_settings({"platform": "jupyter", "app_type": "code-editor"}, env={}), None)
    assert isinstance(default, CodeEditorProbe)
    assert default.options.data_dirs[0] == Path("/home/sagemaker-user/sagemaker-code-editor-server-data")
