"""Snooze, the keep-alive file and the warning before a stop, against real Jupyter servers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

from lamplighter.cli import main
from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer


def watch(server: LocalServer, journal: Path, *extra: str) -> int:
    return main(["watch", "--url", server.url, "--token", server.token, "--journal", str(journal), *extra])


def test_snooze_keeps_the_app_until_its_time(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    keep = tmp_path / "keep-alive"
    assert main(["snooze", "4s", "--keep-alive-file", str(keep), "--journal", str(journal)]) == 0
    snoozed_at = time.monotonic()
    assert watch(jupyter, journal, "--idle-timeout", "1s", "--keep-alive-file", str(keep)) == 0
    assert time.monotonic() - snoozed_at >= 3.9
    with Journal(journal) as j:
        assert j.events(kind="snooze")[0].summary.startswith("snoozed until")
        assert any("snoozed until" in r for e in j.events(kind="decision") for r in e.detail["reasons"])


def test_touching_the_keep_alive_file_keeps_the_app(jupyter: LocalServer, tmp_path: Path) -> None:
    keep = tmp_path / "keep-alive"
    keep.touch()
    done = threading.Event()

    def job() -> None:  # a long job that touches the file as it goes
        end = time.monotonic() + 3
        while time.monotonic() < end:
            os.utime(keep)
            time.sleep(0.2)
        done.set()

    worker = threading.Thread(target=job)
    worker.start()
    started = time.monotonic()
    assert watch(jupyter, tmp_path / "j", "--idle-timeout", "1.5s", "--keep-alive-file", str(keep)) == 0
    worker.join()
    assert time.monotonic() - started >= 4.2  # the last touch at ~3 s, plus the 1.5 s timeout


def test_warning_fires_before_the_stop_and_does_not_delay_it(jupyter: LocalServer, tmp_path: Path) -> None:
    headers = {"Authorization": f"token {jupyter.token}"}
    httpx.post(jupyter.url + "api/terminals", headers=headers, json={}, timeout=10)
    notice = tmp_path / "notice.txt"
    journal = tmp_path / "j"
    assert (
        watch(jupyter, journal, "--idle-timeout", "3s", "--warn-before", "2s", "--notice-file", str(notice))
        == 0
    )
    assert "this app stops at" in notice.read_text()
    with Journal(journal) as j:
        (warn,) = j.events(kind="warn")
        stop = j.events(kind="action")[-1]
    assert "1 terminal(s)" in warn.summary
    assert warn.stop_at is not None and warn.at < warn.stop_at
    # The notice printed in the terminal is pty output; it must not push the deadline back.
    assert stop.stop_at == warn.stop_at
    assert 0 <= stop.detail["decided_after_s"] < 1.0


def test_warn_command_gets_the_reason(jupyter: LocalServer, tmp_path: Path) -> None:
    out = tmp_path / "warned"
    assert (
        watch(
            jupyter,
            tmp_path / "j",
            "--idle-timeout",
            "2s",
            "--warn-before",
            "1s",
            "--warn-command",
            f'echo "$LAMPLIGHTER_STOP_AT $LAMPLIGHTER_REASON" > {out}',
        )
        == 0
    )
    assert "idle for" in out.read_text()
