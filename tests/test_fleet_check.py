"""The scheduled fleet check (its Lambda handler, ``fleet check``, ``fleet status --all-domains``) against
the SageMaker emulator, with SNS and CloudWatch Logs emulated (:mod:`tests.emulators.aws_side`).

Two domains: one with lamplighter's lifecycle configuration as the JupyterLab default, SageMaker's own
idle shutdown for alice's Code Editor apps, running apps with fresh, stale and missing agents (Code
Editor agents read from their CloudWatch log, one written by a real ``lamplighter watch``); one with
nothing set. Two Stopped notebook instances, one with lamplighter's lifecycle configuration, one without
(their agents: tests/test_fleet_notebook_instances.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamplighter.cli import main
from lamplighter.errors import SageMakerCallFailed
from lamplighter.heartbeat import LOG_MARKER, Heartbeat
from lamplighter.sagemaker.client import call
from lamplighter.sagemaker.fleet import AgentState
from lamplighter.sagemaker.fleet_check import check_fleet
from lamplighter.sagemaker.fleet_lambda import aws_client, handler
from tests.emulators.aws_side import SideServices, app_log
from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain

pytest_plugins = ["tests.emulators.conftest_sagemaker"]

_TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "sam" / "template.yaml"


@pytest.fixture
def side(sm: SageMakerEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[SideServices]:
    with SideServices(sm, page_size=2) as services:
        for name, value in services.env().items():
            monkeypatch.setenv(name, value)
        yield services


def _record(updated_at: datetime, interval_s: float | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": 1,
        "target": "code-editor:8888",
        "pid": 7,
        "updated_at": updated_at.isoformat(),
        "verdict": "keep",
        "idle_since": (updated_at - timedelta(minutes=1)).isoformat(),
        "stop_at": (updated_at + timedelta(minutes=59)).isoformat(),
        "reason": "idle for 1m00s",
    }
    if interval_s is not None:
        record["interval_s"] = interval_s
    return record


def _log_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as log:
        log.write(f"2026-01-01T12:00:00+0000 INFO    {LOG_MARKER} {json.dumps(record)}\n")


def _real_agent_logs_its_heartbeat(sm: SageMakerEmulator, app: Any, tmp_path: Path) -> None:
    """``lamplighter watch --once`` in the Code Editor app, its output in the app's log (as the LCC does)."""
    with app_log(app).open("ab") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lamplighter",
                "watch",
                "--platform",
                "sagemaker",
                "--sagemaker-metadata",
                str(app.metadata_path),
                "--code-editor-data-dir",
                str(tmp_path / "editor-data"),
                "--heartbeat",
                str(tmp_path / "editor-heartbeat.json"),
                "--no-process-signal",
                "--action",
                "none",
                "--journal",
                str(tmp_path / "editor.sqlite3"),
                "--once",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "HOME": str(tmp_path)},
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, app_log(app).read_text()[-2000:]


@pytest.fixture
def fleet(sm: SageMakerEmulator, domain: StudioDomain, side: SideServices, tmp_path: Path) -> dict[str, Any]:
    client = sm.client()
    now = datetime.now(timezone.utc)
    script = base64.b64encode(b"#!/bin/bash\nlamplighter watch --platform sagemaker\n").decode()
    arn = client.create_studio_lifecycle_config(
        StudioLifecycleConfigName="lamplighter-jupyterlab",
        StudioLifecycleConfigContent=script,
        StudioLifecycleConfigAppType="JupyterLab",
    )["StudioLifecycleConfigArn"]
    lab = {"LifecycleConfigArns": [arn], "DefaultResourceSpec": {"LifecycleConfigArn": arn}}
    client.update_domain(
        DomainId=domain.id,
        DefaultUserSettings={"JupyterLabAppSettings": lab},
        DefaultSpaceSettings={"JupyterLabAppSettings": lab},
    )
    idle = {"IdleSettings": {"LifecycleManagement": "ENABLED", "IdleTimeoutInMinutes": 120}}
    client.update_user_profile(
        DomainId=domain.id,
        UserProfileName=domain.user,
        UserSettings={"CodeEditorAppSettings": {"AppLifecycleManagement": idle}},
    )
    editor = {"AppType": "CodeEditor"}
    for name in ("editor", "old-editor", "slow-editor"):
        client.create_space(DomainId=domain.id, SpaceName=name, SpaceSettings=editor)
    # alice's private Code Editor space: native idle shutdown from her profile, a space timeout of 90 min.
    client.create_space(
        DomainId=domain.id,
        SpaceName="alice-editor",
        SpaceSettings={
            **editor,
            "CodeEditorAppSettings": {
                "AppLifecycleManagement": {"IdleSettings": {"IdleTimeoutInMinutes": 90}}
            },
        },
        OwnershipSettings={"OwnerUserProfileName": domain.user},
        SpaceSharingSettings={"SharingType": "Private"},
    )
    # The apps: JupyterLab with a fresh heartbeat file; three Code Editor apps with log lines.
    home = sm.home(domain.id, domain.space)
    (home / ".lamplighter").mkdir(parents=True)
    (home / ".lamplighter" / "heartbeat.json").write_text(
        json.dumps(_record(now - timedelta(seconds=20), 60))
    )
    client.create_app(DomainId=domain.id, SpaceName=domain.space, AppType="JupyterLab", AppName="default")
    for name in ("editor", "old-editor", "slow-editor"):
        client.create_app(DomainId=domain.id, SpaceName=name, AppType="CodeEditor", AppName="default")
    apps = {
        name: sm.app(domain.id, "CodeEditor", space=name) for name in ("editor", "old-editor", "slow-editor")
    }
    lab_app = sm.app(domain.id, "JupyterLab", space=domain.space)
    sm.wait_for(
        lambda: lab_app.status() == "InService" and all(a.status() == "InService" for a in apps.values())
    )
    _real_agent_logs_its_heartbeat(sm, apps["editor"], tmp_path)
    # Ten minutes old: stale for an agent writing every 2 min, running for one that writes every 10 min
    # (the caller's 60 s would call both stale).
    _log_line(app_log(apps["old-editor"]), _record(now - timedelta(minutes=10), 120))
    _log_line(app_log(apps["slow-editor"]), _record(now - timedelta(minutes=10), 600))
    second = sm.add_domain("second")
    sm.add_user_profile(second, "bob")
    client.create_notebook_instance_lifecycle_config(
        NotebookInstanceLifecycleConfigName="lamplighter-autostop", OnStart=[{"Content": script}]
    )
    sm.add_notebook_instance("nb-guarded", lifecycle_config="lamplighter-autostop", running=False)
    sm.add_notebook_instance("nb-bare", running=False)
    return {"second": second, "now": now}


async def test_the_fleet_check_finds_what_runs_idle_unguarded(
    sm: SageMakerEmulator, domain: StudioDomain, side: SideServices, fleet: dict[str, Any]
) -> None:
    now = datetime.now(timezone.utc)
    report = await check_fleet(
        client=sm.client(), now=now, logs_client=aws_client("logs", region="us-east-1"), login_as=domain.user
    )
    assert set(report.domains) == {domain.id, fleet["second"]}
    owners = {(o.domain_id, o.kind, o.name, o.app_type): o for o in report.owners}
    # Every user profile and space, also those with no app running.
    alice_lab = owners[(domain.id, "user profile", domain.user, "JupyterLab")]
    assert alice_lab.lamplighter is True and alice_lab.lifecycle_config and not alice_lab.problems
    alice_editor = owners[(domain.id, "user profile", domain.user, "CodeEditor")]
    assert alice_editor.native.enabled and alice_editor.native.timeout_minutes == 120
    assert not alice_editor.problems
    private_editor = owners[(domain.id, "space", "alice-editor", "CodeEditor")]
    assert (private_editor.native.enabled, private_editor.native.timeout_minutes) == (True, 90)
    assert private_editor.native.source == "space"
    assert owners[(domain.id, "space", "team", "JupyterLab")].lamplighter is True
    shared_editor = owners[(domain.id, "space", "editor", "CodeEditor")]
    assert shared_editor.problems and "nothing stops idle apps" in shared_editor.problems[0]
    bob = owners[(fleet["second"], "user profile", "bob", "JupyterLab")]
    assert not bob.protected and bob.problems

    agents = {(e.app.identity.owner, e.app.identity.app_type): e for e in report.apps}
    assert agents[(domain.space, "JupyterLab")].agent is AgentState.RUNNING
    real = agents[("editor", "CodeEditor")]
    assert real.agent is AgentState.RUNNING, real.detail
    assert real.heartbeat is not None and real.heartbeat.interval == timedelta(seconds=60)
    stale = agents[("old-editor", "CodeEditor")]
    assert stale.agent is AgentState.STALE and "written every 2m00s" in stale.detail
    assert agents[("slow-editor", "CodeEditor")].agent is AgentState.RUNNING
    assert "logs:FilterLogEvents" in side.calls
    # A role that may not read the logs: those agents are unknown, and the line names the permission.
    side.deny_logs = True
    denied = await check_fleet(
        client=sm.client(), now=now, domains=[domain.id], logs_client=aws_client("logs", region="us-east-1")
    )
    editor_entry = next(e for e in denied.apps if e.app.identity.owner == "editor")
    assert editor_entry.agent is AgentState.UNKNOWN and "logs:FilterLogEvents" in editor_entry.detail
    with pytest.raises(SageMakerCallFailed) as refused:  # the one call helper names the service's action
        await call(aws_client("logs", region="us-east-1"), "FilterLogEvents", logGroupName="/any")
    assert str(refused.value) == "FilterLogEvents: access denied; the IAM role needs logs:FilterLogEvents"
    side.deny_logs = False

    problems = report.problems()
    assert any("old-editor CodeEditor/default: agent stale" in p for p in problems)
    assert any(p.startswith("notebook instance nb-bare: no lifecycle configuration") for p in problems)
    assert not any("nb-guarded" in p for p in problems)
    # Running agents (a fresh file, a slow agent's old line) are no problem; their owners may be.
    assert not any(
        p.startswith("app ") and ("slow-editor" in p or f" {domain.space} " in p) for p in problems
    )
    assert {n.name: n.lifecycle_config for n in report.notebook_instances} == {
        "nb-guarded": "lamplighter-autostop",
        "nb-bare": None,
    }


def test_the_lambda_publishes_the_summary_and_never_raises(
    sm: SageMakerEmulator,
    domain: StudioDomain,
    side: SideServices,
    fleet: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = side.create_topic("lamplighter-fleet")
    monkeypatch.setenv("LAMPLIGHTER_FLEETCHECK_SNS_TOPIC", topic)
    monkeypatch.setenv("LAMPLIGHTER_FLEETCHECK_LOGIN_AS", domain.user)
    result = handler({"domains": ["ignored: the event chooses nothing"]}, None)
    assert result["status"] == "problems" and result["domains"] == 2 and result["message_id"]
    [message] = side.published
    assert message.topic_arn == topic
    assert message.subject and message.subject.startswith("lamplighter fleet check: ")
    assert "nb-bare" in message.message and "old-editor" in message.message
    assert f"problems: {result['problems']}" in message.message

    # One domain only, through the settings; a topic that does not exist is an error, not a raise.
    monkeypatch.setenv("LAMPLIGHTER_FLEETCHECK_DOMAINS", fleet["second"])
    monkeypatch.setenv("LAMPLIGHTER_FLEETCHECK_SNS_TOPIC", topic + "-gone")
    failed = handler({}, None)
    assert failed["status"] == "error" and "NotFound" in failed["error"]
    assert len(side.published) == 1


def test_fleet_status_all_domains_and_fleet_check_commands(
    sm: SageMakerEmulator,
    domain: StudioDomain,
    side: SideServices,
    fleet: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["fleet", "status", "--all-domains", "--login-as", domain.user, "--json"]
    assert main(args) == 0
    rows = {(r["space"], r["app_type"]): r["agent"] for r in json.loads(capsys.readouterr().out)}
    assert rows[("editor", "CodeEditor")] == "running"
    assert rows[("old-editor", "CodeEditor")] == "stale"
    assert main(["fleet", "check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report["domains"]) == {domain.id, fleet["second"]} and report["problems"]
    assert main(["fleet", "status"]) == 2
    assert "--all-domains" in capsys.readouterr().err


def test_heartbeats_record_their_own_interval() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    slow = Heartbeat.parse(_record(now - timedelta(minutes=10), 600))
    assert not slow.stale(now, timedelta(seconds=60))
    old_agent = Heartbeat.parse(_record(now - timedelta(minutes=10), None))
    assert old_agent.interval is None and old_agent.stale(now, timedelta(seconds=60))
    assert not old_agent.stale(now, timedelta(minutes=5))


def test_sam_template_schedules_the_fleet_check() -> None:
    class _Loader(yaml.SafeLoader):
        pass

    yaml.add_multi_constructor("!", lambda loader, suffix, node: {suffix: None}, Loader=_Loader)
    template = yaml.load(_TEMPLATE.read_text(), Loader=_Loader)
    function = template["Resources"]["FleetCheckFunction"]["Properties"]
    assert function["Handler"] == "lamplighter.sagemaker.fleet_lambda.handler"
    assert function["Events"]["Daily"]["Type"] == "Schedule"
    assert template["Parameters"]["FleetCheckSchedule"]["Default"] == "rate(1 day)"
    assert template["Parameters"]["FleetCheckTopicArn"]["Default"] == ""
    assert template["Resources"]["FleetCheckTopicPolicy"]["Condition"] == "HasFleetCheckTopic"
    actions = {
        action
        for policy in template["Resources"]["FleetCheckRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    # Reads only, plus its own logs and the logins that read a heartbeat file: nothing that changes the fleet.
    writes = {a for a in actions if a.split(":")[1].startswith(("Delete", "Update", "Stop", "Create", "Put"))}
    assert writes == {"sagemaker:CreatePresignedDomainUrl", "logs:CreateLogStream", "logs:PutLogEvents"}
    assert "logs:FilterLogEvents" in actions and "sagemaker:ListNotebookInstances" in actions


def test_the_rendered_lifecycle_script_is_recognised_as_lamplighters() -> None:
    from lamplighter.sagemaker.fleet_check import is_lamplighter_script
    from lamplighter.sagemaker.lcc import RenderOptions, render_on_start

    for app_type in ("JupyterLab", "CodeEditor"):
        rendered = render_on_start(RenderOptions(app_type=app_type, wheelhouse="s3://bucket/wheels"))
        assert is_lamplighter_script(base64.b64encode(rendered.encode()).decode())
    assert not is_lamplighter_script(base64.b64encode(b"#!/bin/bash\npip install autostop\n").decode())
    assert not is_lamplighter_script("not base64!")
