"""Notebook instances in ``fleet status`` and ``fleet check``, against the emulator and emulated CloudWatch Logs.

Seven instances: five InService (each a real jupyter_server), two Stopped. Their agents' heartbeats are
read from the instances' ``/var/log/jupyter.log`` as SageMaker ships it to
``/aws/sagemaker/NotebookInstances`` (:mod:`tests.emulators.aws_side`); one line is written by a real
``lamplighter watch --platform sagemaker-notebook-instance``, the others by the test, some of them
hostile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from lamplighter.cli import main
from lamplighter.errors import MalformedAnswer
from lamplighter.heartbeat import LOG_MARKER, Heartbeat, heartbeat_from_log_line
from lamplighter.sagemaker.fleet import AgentState
from lamplighter.sagemaker.fleet_check import FleetReport, check_fleet, is_lamplighter_script
from lamplighter.sagemaker.fleet_lambda import aws_client
from lamplighter.sagemaker.fleet_notebooks import NotebookInstanceEntry, notebook_instance_status
from lamplighter.sagemaker.lcc import NOTEBOOK_INSTANCE, RenderOptions, render_on_start
from tests.emulators.aws_side import SideServices, notebook_instance_log
from tests.emulators.notebook_instances import EmulatedNotebookInstance
from tests.emulators.sagemaker import SageMakerEmulator

pytest_plugins = ["tests.emulators.conftest_sagemaker"]

_IN_SERVICE = ("nb-live", "nb-stale", "nb-slow", "nb-silent", "nb-foreign")
# What a log line may hold that is not a heartbeat, though it carries the marker: never a crash.
_HOSTILE = [
    "{not json",
    "[" * 200_000,  # nested past the JSON decoder's recursion limit
    json.dumps({"version": 1, "verdict": "keep", "updated_at": "not a time"}),
    json.dumps({"version": 1, "verdict": "keep", "updated_at": "2026-01-01T12:00:00Z", "interval_s": -5}),
    json.dumps({"version": 1, "verdict": "rm -rf", "updated_at": "2026-01-01T12:00:00Z"}),
    json.dumps({"version": 1, "verdict": "keep", "updated_at": "2026-01-01T12:00:00Z", "pid": "x"}),
    json.dumps([1, 2, 3]),
    "\x00\x1b[31m" + "x" * 50_000,
]


@pytest.fixture
def side(sm: SageMakerEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[SideServices]:
    with SideServices(sm, page_size=2) as services:
        for name, value in services.env().items():
            monkeypatch.setenv(name, value)
        yield services


def _record(updated_at: datetime, interval_s: float) -> dict[str, Any]:
    return {
        "version": 1,
        "target": "https://localhost:8443/",
        "pid": 7,
        "updated_at": updated_at.isoformat(),
        "interval_s": interval_s,
        "verdict": "keep",
        "idle_since": (updated_at - timedelta(minutes=1)).isoformat(),
        "stop_at": (updated_at + timedelta(minutes=59)).isoformat(),
        "reason": "idle for 1m00s",
    }


def _log(instance: EmulatedNotebookInstance, *payloads: str) -> None:
    path = notebook_instance_log(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        for payload in payloads:
            log.write(f"2026-01-01 12:00:00,000 INFO lamplighter.heartbeat: {LOG_MARKER} {payload}\n")


def _real_agent_logs_its_heartbeat(instance: EmulatedNotebookInstance, tmp_path: Path) -> None:
    """``lamplighter watch --once`` on the instance, its output in ``/var/log/jupyter.log`` (as the LCC does)."""
    assert instance.server is not None
    path = notebook_instance_log(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lamplighter",
                "watch",
                "--platform",
                "sagemaker-notebook-instance",
                "--sagemaker-metadata",
                str(instance.metadata_path),
                "--url",  # the emulated instance serves plain http
                instance.server.url,
                "--no-process-signal",
                "--action",
                "none",
                "--journal",
                str(tmp_path / "nb.sqlite3"),
                "--once",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "HOME": str(tmp_path)},
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, path.read_text()[-2000:]


@pytest.fixture
def instances(
    sm: SageMakerEmulator, side: SideServices, tmp_path: Path
) -> dict[str, EmulatedNotebookInstance]:
    client = sm.client()
    script = render_on_start(
        RenderOptions(
            app_type=NOTEBOOK_INSTANCE, wheelhouse="s3://bucket/wheels/", log_file="/var/log/jupyter.log"
        )
    )
    ours = base64.b64encode(script.encode()).decode()
    client.create_notebook_instance_lifecycle_config(
        NotebookInstanceLifecycleConfigName="lamplighter-nb", OnStart=[{"Content": ours}]
    )
    foreign = base64.b64encode(b"#!/bin/bash\npython autostop.py --time 3600 &\n").decode()
    client.create_notebook_instance_lifecycle_config(
        NotebookInstanceLifecycleConfigName="autostop", OnStart=[{"Content": foreign}]
    )
    made = {
        name: sm.add_notebook_instance(
            name, lifecycle_config="autostop" if name == "nb-foreign" else "lamplighter-nb"
        )
        for name in _IN_SERVICE
    }
    made["nb-off"] = sm.add_notebook_instance("nb-off", lifecycle_config="lamplighter-nb", running=False)
    made["nb-bare"] = sm.add_notebook_instance("nb-bare", running=False)
    sm.wait_for(lambda: all(made[name].status == "InService" for name in _IN_SERVICE))
    now = datetime.now(timezone.utc)
    _real_agent_logs_its_heartbeat(made["nb-live"], tmp_path)
    # Ten minutes old: stale for an agent writing every 2 min, running for one writing every 10 min.
    _log(made["nb-stale"], json.dumps(_record(now - timedelta(minutes=10), 120)), *_HOSTILE)
    _log(made["nb-slow"], json.dumps(_record(now - timedelta(minutes=10), 600)))
    _log(made["nb-silent"], *_HOSTILE)
    client.close()
    return made


async def _status(sm: SageMakerEmulator) -> dict[str, NotebookInstanceEntry]:
    entries = await notebook_instance_status(
        sm.client(), now=datetime.now(timezone.utc), logs_client=aws_client("logs", region="us-east-1")
    )
    return {entry.name: entry for entry in entries}


def test_each_instance_gets_its_agents_state_by_the_agents_own_interval(
    sm: SageMakerEmulator,
    side: SideServices,
    instances: dict[str, EmulatedNotebookInstance],
    capsys: pytest.CaptureFixture[str],
) -> None:
    found = asyncio.run(_status(sm))
    assert list(found) == sorted(instances)  # every instance of the region, by name
    live = found["nb-live"]
    assert live.agent is AgentState.RUNNING, live.detail
    # The real agent recorded its own interval, and its verdict: nothing runs on the idle instance.
    assert live.heartbeat is not None and live.heartbeat.interval == timedelta(seconds=60)
    assert live.heartbeat.verdict == "keep" and live.heartbeat.idle_since is not None
    assert live.lifecycle_config == "lamplighter-nb"
    stale = found["nb-stale"]  # its hostile lines after the stale one are skipped, not taken as newer
    assert stale.agent is AgentState.STALE and "written every 2m00s" in stale.detail
    assert found["nb-slow"].agent is AgentState.RUNNING  # the checker's own 60 s would call it stale
    silent = found["nb-silent"]  # nothing but hostile lines
    assert silent.agent is AgentState.NO_AGENT and silent.heartbeat is None
    assert silent.detail == "no heartbeat line in /aws/sagemaker/NotebookInstances"
    assert found["nb-foreign"].agent is AgentState.NO_AGENT
    off = found["nb-off"]
    assert (off.agent, off.detail, off.status) == (
        AgentState.NOT_APPLICABLE,
        "instance is Stopped",
        "Stopped",
    )

    # The command: the same rows in --json, and a table (after the apps of --all-domains: none here).
    assert main(["fleet", "status", "--notebook-instances", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(instances) and {r["kind"] for r in rows.values()} == {"notebook instance"}
    assert rows["nb-live"]["agent"] == "running" and rows["nb-live"]["stop_at"]
    assert isinstance(rows["nb-live"]["idle_seconds"], int) and rows["nb-live"]["verdict"] == "keep"
    assert rows["nb-stale"]["agent"] == "stale" and rows["nb-silent"]["agent"] == "no agent"
    assert rows["nb-off"]["agent"] == "n/a" and rows["nb-bare"]["lifecycle_config"] is None
    assert main(["fleet", "status", "--all-domains", "--notebook-instances"]) == 0
    table = capsys.readouterr().out
    assert "0 apps" in table and "7 notebook instances" in table
    row = next(line for line in table.splitlines() if "nb-live" in line)
    assert "lamplighter-nb" in row and "running" in row and "keep" in row
    # The log group is a setting: elsewhere nothing is found.
    assert main(["fleet", "status", "--notebook-instances", "--json",
                 "--fleetcheck-notebook-instance-log-group", "/elsewhere"]) == 0  # fmt: skip
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["nb-live"]["agent"] == "no agent" and "/elsewhere" in rows["nb-live"]["detail"]
    assert main(["fleet", "status", "--all-domains", "--sagemaker-domain", "d-x"]) == 2
    assert "--notebook-instances" in capsys.readouterr().err

    # A role that may not read the logs: the running instances are unknown, and the line says why.
    side.deny_logs = True
    denied = asyncio.run(_status(sm))
    assert denied["nb-live"].agent is AgentState.UNKNOWN
    assert (
        "logs:FilterLogEvents" in denied["nb-live"].detail and "NotebookInstances" in denied["nb-live"].detail
    )
    assert denied["nb-off"].agent is AgentState.NOT_APPLICABLE


async def test_no_log_group_yet_is_no_agent(sm: SageMakerEmulator, side: SideServices) -> None:
    instance = sm.add_notebook_instance("nb-new", lifecycle_config=None)
    sm.wait_for(lambda: instance.status == "InService")
    found = await _status(sm)
    assert found["nb-new"].agent is AgentState.NO_AGENT
    assert found["nb-new"].detail == "no log group /aws/sagemaker/NotebookInstances"


def _check(sm: SageMakerEmulator) -> FleetReport:
    logs = aws_client("logs", region="us-east-1")
    return asyncio.run(check_fleet(client=sm.client(), now=datetime.now(timezone.utc), logs_client=logs))


def test_the_fleet_check_lists_each_instances_problems(
    sm: SageMakerEmulator,
    side: SideServices,
    instances: dict[str, EmulatedNotebookInstance],
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = _check(sm)
    checks = {n.name: n for n in report.notebook_instances}
    problems = {name: list(check.problems) for name, check in checks.items()}
    assert problems["nb-live"] == [] and checks["nb-live"].lamplighter is True
    assert problems["nb-slow"] == []
    assert problems["nb-off"] == []  # Stopped with lamplighter's configuration: nothing to run
    [stale] = problems["nb-stale"]
    assert stale.startswith("agent stale: last heartbeat 10m")
    assert problems["nb-silent"] == ["agent no agent: no heartbeat line in /aws/sagemaker/NotebookInstances"]
    # Another script is a problem by itself; no agent is expected where lamplighter's script is not.
    assert problems["nb-foreign"] == ["lifecycle configuration autostop does not run lamplighter"]
    assert checks["nb-foreign"].lamplighter is False
    assert problems["nb-bare"] == ["no lifecycle configuration attached: nothing stops it when idle"]
    lines = report.problems()
    assert "notebook instance nb-foreign: lifecycle configuration autostop does not run lamplighter" in lines
    assert "notebook instances: 7 (2 with a running agent)" in report.summary()
    # One read per configuration, however many instances share it.
    assert sm.operations().count("DescribeNotebookInstanceLifecycleConfig") == 2
    as_json = report.to_json()["notebook_instances"]
    live = next(row for row in as_json if row["name"] == "nb-live")
    assert live["agent"] == "running" and live["lamplighter"] is True and live["verdict"] == "keep"
    assert isinstance(live["idle_seconds"], int) and live["problems"] == []
    assert main(["fleet", "check", "--json"]) == 1  # the command prints the same report
    printed = json.loads(capsys.readouterr().out)

    def ours(problems: list[str]) -> list[str]:  # the heartbeat's age moves on between the two checks
        return [re.sub(r"\d+m\d+s ago", "ago", p) for p in problems if p.startswith("notebook instance ")]

    assert ours(printed["problems"]) == ours(lines) and len(ours(lines)) == 4

    # Refused reads are problems that say what was refused.
    side.deny_logs = True
    sm.inject_error(
        "DescribeNotebookInstanceLifecycleConfig",
        "AccessDeniedException",
        "User is not authorized to perform: sagemaker:DescribeNotebookInstanceLifecycleConfig",
    )
    denied = _check(sm)
    by_name = {n.name: list(n.problems) for n in denied.notebook_instances}
    unreadable = [
        p for p in by_name["nb-foreign"] + by_name["nb-live"] if p.startswith("cannot read lifecycle")
    ]
    assert len(unreadable) == 1 and "sagemaker:DescribeNotebookInstanceLifecycleConfig" in unreadable[0]
    assert any(
        p.startswith("cannot read its agent: ") and "logs:FilterLogEvents" in p for p in by_name["nb-live"]
    )
    assert by_name["nb-off"] == []


def test_the_emulator_answers_these_calls_as_sagemaker_does(sm: SageMakerEmulator) -> None:
    client = sm.client()
    with pytest.raises(ClientError) as missing:
        client.describe_notebook_instance_lifecycle_config(NotebookInstanceLifecycleConfigName="nope")
    assert missing.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as bad_name:
        client.describe_notebook_instance_lifecycle_config(NotebookInstanceLifecycleConfigName="-bad_name")
    assert "does not match" in bad_name.value.response["Error"]["Message"]
    with pytest.raises(ClientError, match="SortBy"):
        client.list_notebook_instances(SortBy="Size")
    with pytest.raises(ClientError, match="maximum"):
        client.list_notebook_instances(MaxResults=101)
    client.close()


def test_a_heartbeat_nested_past_the_decoders_limit_is_malformed_not_a_crash() -> None:
    deep = "[" * 200_000
    assert heartbeat_from_log_line(f"{LOG_MARKER} {deep}") is None
    with pytest.raises(MalformedAnswer):  # the same reader serves the heartbeat file
        Heartbeat.parse_text(deep)


def test_the_notebook_instance_script_is_recognised_as_lamplighters() -> None:
    script = render_on_start(RenderOptions(app_type=NOTEBOOK_INSTANCE, wheelhouse="s3://bucket/wheels/"))
    assert is_lamplighter_script(base64.b64encode(script.encode()).decode())
