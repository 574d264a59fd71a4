"""``lamplighter hub`` and ``lamplighter status --hub`` as a hub's admin runs them, against the real hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lamplighter.cli import main
from tests.conftest import cli
from tests.hub import Hub
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "LAMPLIGHTER_"))}
    return {**clean, **extra}


def test_the_hub_command_without_a_hub_or_with_a_wrong_token_is_one_line(hub: Hub, tmp_path: Path) -> None:
    missing = cli("hub", "--journal", str(tmp_path / "j.sqlite3"), env=_env())
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "lamplighter: hub_url: no hub given; pass --hub-url or set JUPYTERHUB_API_URL"
    ]
    wrong = cli("hub", "--hub-url", hub.api, env=_env(JUPYTERHUB_API_TOKEN="not-the-token"))
    assert wrong.returncode == 3
    [line] = wrong.stderr.strip().splitlines()
    assert "HTTP 403" in line and "list:users" in line and "not-the-token" not in line


def test_the_hub_service_stops_an_idle_server_and_exits_on_sigterm(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    name = f"c{uuid.uuid4().hex[:8]}"
    hub_users.append(name)
    hub.start(name)
    journal = tmp_path / "journal.sqlite3"
    env = _env(JUPYTERHUB_API_TOKEN=hub.service_token, JUPYTERHUB_API_URL=hub.api)
    # --timeout and --cull-every: jupyterhub-idle-culler's spellings.
    args = ["hub", "--timeout", "3s", "--cull-every", "1s", "--journal", str(journal)]
    service = subprocess.Popen(
        [sys.executable, "-m", "lamplighter", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: hub.server(name) is None, timeout_s=40, what="the service to stop the server")
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=60)
    assert service.returncode == 0, stderr
    assert f"DELETE {hub.api}users/{name}/server" in stderr and hub.service_token not in stderr


def test_status_hub_lists_every_server_with_its_verdict(
    hub: Hub,
    hub_users: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    hub_users.append(name)
    hub.start(name)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.service_token)
    code = main(["status", "--hub", "--hub-url", hub.api, "--idle-timeout", "1h", "--json"])
    assert code == 0
    rows = {row["user"]: row for row in json.loads(capsys.readouterr().out)["servers"]}
    assert (
        rows[name]["verdict"] == "keep" and rows[name]["stop_at"] and rows[name]["path"] == f"/user/{name}/"
    )
    assert hub.server(name) is not None  # status acts on nothing
    assert main(["status", "--hub", "--hub-url", hub.api, "--idle-timeout", "1h"]) == 0
    assert any(line.startswith(name) and "KEEP" in line for line in capsys.readouterr().out.splitlines())
