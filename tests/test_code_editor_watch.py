"""``watch --app-type code-editor`` end to end: file edits keep an editor app up, ignored paths do not."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamplighter.cli import main
from lamplighter.journal import Journal
from tests.ports import start_http_server


@pytest.fixture
def editor(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A stand-in editor server process (a plain HTTP server) listening on a free port."""
    port, process = start_http_server(tmp_path)
    yield port, process
    process.kill()
    process.wait()


def watch(port: int, workspace: Path, journal: Path) -> int:
    return main(
        [
            "watch",
            "--app-type",
            "code-editor",
            "--editor-port",
            str(port),
            "--watch-paths",
            str(workspace),
            "--idle-timeout",
            "2s",
            "--process-signal",
            "--process-window",
            "1.5s",
            "--process-sample-interval",
            "0.2s",
            "--journal",
            str(journal),
        ]
    )


def edit_for(path: Path, seconds: float) -> threading.Thread:
    def edit() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            path.write_text(str(time.monotonic()))
            time.sleep(0.3)

    thread = threading.Thread(target=edit)
    thread.start()
    return thread


def test_file_edits_keep_the_editor_app_then_it_is_stopped(
    editor: tuple[int, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, process = editor
    workspace = tmp_path / "work"
    workspace.mkdir()
    editing = edit_for(workspace / "analysis.py", 4)
    started = time.monotonic()
    assert watch(port, workspace, tmp_path / "j") == 0
    editing.join()
    assert time.monotonic() - started >= 5.5  # last edit at ~4 s + the 2 s timeout
    assert process.wait(5) is not None
    with Journal(tmp_path / "j") as j:
        reasons = [r for e in j.events(kind="decision") for r in e.detail["reasons"]]
    assert any("analysis.py changed" in r for r in reasons)


def test_edits_in_ignored_paths_do_not_count(
    editor: tuple[int, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, _ = editor
    workspace = tmp_path / "work"
    (workspace / ".git").mkdir(parents=True)
    editing = edit_for(workspace / ".git" / "index", 6)
    started = time.monotonic()
    assert watch(port, workspace, tmp_path / "j") == 0
    assert time.monotonic() - started < 5.0
    editing.join()
