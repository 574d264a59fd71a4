"""``watch --platform sagemaker`` inside an emulated Studio app: the idle app is deleted through DeleteApp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamplighter.cli import main
from lamplighter.journal import Journal
from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain

pytest_plugins = ["tests.emulators.conftest_sagemaker"]


def test_agent_inside_an_app_stops_it_with_delete_app(
    sm: SageMakerEmulator, domain: StudioDomain, tmp_path: Path
) -> None:
    sm.client().create_app(
        DomainId=domain.id, AppType="JupyterLab", AppName="default", SpaceName=domain.space
    )
    app = sm.app(domain.id, "JupyterLab", space=domain.space)
    sm.wait_for(lambda: app.status() == "InService" and app.server is not None)
    server = app.server
    journal = tmp_path / "j.sqlite3"
    heartbeat = tmp_path / "heartbeat.json"
    code = main(
        [
            "watch",
            "--platform",
            "sagemaker",
            "--sagemaker-metadata",
            str(app.metadata_path),
            "--url",
            server.url,
            "--token",
            server.token,
            "--idle-timeout",
            "2s",
            "--journal",
            str(journal),
            "--heartbeat",
            str(heartbeat),
        ]
    )
    assert code == 0
    assert app.status() == "Deleted"
    assert not server.running
    assert sm.operations().count("DeleteApp") == 1
    with Journal(journal) as j:
        action = j.events(kind="action")[-1]
    assert action.verdict == "stopped"
    assert action.detail["stopper"] == f"DeleteApp {domain.id}/space:{domain.space}/JupyterLab/default"
    beat = json.loads(heartbeat.read_text())
    assert beat["verdict"] == "stop" and beat["version"] == 1


def test_run_shell_in_a_studio_app_through_the_presigned_login(
    sm: SageMakerEmulator, domain: StudioDomain, capsys: pytest.CaptureFixture[str]
) -> None:
    sm.client().create_app(
        DomainId=domain.id, AppType="JupyterLab", AppName="default", SpaceName=domain.space
    )
    app = sm.app(domain.id, "JupyterLab", space=domain.space)
    sm.wait_for(lambda: app.status() == "InService" and app.server is not None)
    code = main(
        [
            "run",
            "shell",
            "--sagemaker-domain",
            domain.id,
            "--space",
            domain.space,
            "--",
            "echo hello from studio; exit 7",
        ]
    )
    assert code == 7
    assert "hello from studio" in capsys.readouterr().out
