"""The warning before a hub stop (jupyterhub-idle-culler #79, #4): ``--warn-command`` with the hub's user
and server in its environment, against the real hub of tests/hub.py; the settings that only act on
this machine's files are refused with exit 2 rather than ignored."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

import pytest

from lamplighter.journal import Journal
from tests.conftest import cli
from tests.hub import Hub, hub_settings, new_user, running_fleet
from tests.test_hub_fleet import gone, stops

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "LAMPLIGHTER_"))}
    return {**clean, **extra}


async def test_the_warn_command_runs_before_the_stop_with_the_hub_user_and_server(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = new_user(hub_users)
    await asyncio.to_thread(hub.start, name, "lab")
    out = tmp_path / "warned.txt"
    command = f"env | grep -E '^LAMPLIGHTER_(HUB_|STOP_AT)' | sort >> {shlex.quote(str(out))}"
    settings = hub_settings(hub, tmp_path, idle_timeout="6s", warn_before="3s", warn_command=command)
    async with running_fleet(hub, settings):
        await gone(hub, settings, name, "lab")
    lines = out.read_text().splitlines()
    assert f"LAMPLIGHTER_HUB_USER={name}" in lines
    assert "LAMPLIGHTER_HUB_SERVER=lab" in lines
    assert f"LAMPLIGHTER_HUB_SERVER_PATH=/user/{name}/lab/" in lines
    with Journal(settings.journal) as journal:
        warns = list(journal.events(kind="warn"))
    [stop] = stops(settings)
    # One warning per deadline: a later one only if the deadline moved (the hub's last_activity for a
    # server just spawned can arrive late); the last is for the deadline the stop kept.
    assert warns and len({w.stop_at for w in warns}) == len(warns)
    warn = warns[-1]
    assert warn.summary.startswith("warning command: the command exited 0"), warn.summary
    # Warned about warn_before ahead of the deadline, and the warning moved nothing: the stop is on time.
    assert warn.stop_at == stop.stop_at and 0 < (stop.stop_at - warn.at).total_seconds() <= 3.5
    assert f"LAMPLIGHTER_STOP_AT={stop.stop_at.isoformat()}" in lines
    assert 0 <= stop.detail["decided_after_s"] <= 1.0, stop.detail


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--warn-before", "5m"], "warn_before: the default notice"),
        (["--keep-alive-file", "/tmp/keep"], "keep_alive_file: the hub service cannot see files"),
    ],
)
def test_flags_that_cannot_reach_a_hub_users_server_are_refused(
    hub: Hub, tmp_path: Path, flags: list[str], words: str
) -> None:
    env = _env(JUPYTERHUB_API_TOKEN=hub.service_token, JUPYTERHUB_API_URL=hub.api)
    done = cli("hub", *flags, "--journal", str(tmp_path / "j.sqlite3"), env=env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"lamplighter: {words}"), line
