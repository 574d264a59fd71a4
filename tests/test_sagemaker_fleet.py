"""The fleet check of a Studio domain: apps with and without an agent heartbeat, against the emulator."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from lamplighter.cli import main
from lamplighter.errors import MalformedAnswer
from lamplighter.sagemaker.fleet import AgentState, FleetEntry, Heartbeat, fleet_status
from tests.emulators.aws_side import SideServices
from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain

pytest_plugins = ["tests.emulators.conftest_sagemaker"]


def _write_heartbeat(home: Path, now: datetime) -> None:
    """What the agent inside an app writes (``~/.lamplighter/heartbeat.json``, format version 1)."""
    (home / ".lamplighter").mkdir(parents=True, exist_ok=True)
    record = {
        "version": 1,
        "target": "http://127.0.0.1:8888/jupyterlab/default/",
        "pid": 4242,
        "updated_at": (now - timedelta(seconds=30)).isoformat(),
        "verdict": "keep",
        "idle_since": (now - timedelta(minutes=10)).isoformat(),
        "stop_at": (now + timedelta(minutes=50)).isoformat(),
        "reason": "idle since 11:50 UTC; stop at 12:50 UTC",
    }
    (home / ".lamplighter" / "heartbeat.json").write_text(json.dumps(record))


def _by_app(entries: list[FleetEntry]) -> dict[tuple[str, str, str], FleetEntry]:
    return {(e.app.identity.owner, e.app.identity.app_type, e.app.identity.app_name): e for e in entries}


def _last_activity(sm: SageMakerEmulator, domain: StudioDomain, app_type: str, **owner: str) -> str:
    server = sm.app(domain.id, app_type, **owner).server
    assert server is not None
    # Straight to the server, past Studio's front door (it has no token, as in SageMaker Distribution).
    answer = httpx.get(server.url + "api/status")
    return str(answer.json()["last_activity"])


async def test_fleet_status_lists_apps_with_and_without_a_heartbeat(
    sm: SageMakerEmulator,
    domain: StudioDomain,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(timezone.utc)
    # The space's home has a heartbeat (its agent runs); alice's Studio Classic app has none.
    _write_heartbeat(sm.home(domain.id, domain.space), now)
    client = sm.client()
    client.create_app(DomainId=domain.id, SpaceName=domain.space, AppType="JupyterLab", AppName="default")
    client.create_app(
        DomainId=domain.id, UserProfileName=domain.user, AppType="JupyterServer", AppName="default"
    )
    client.create_app(
        DomainId=domain.id, SpaceName=domain.shared_space, AppType="CodeEditor", AppName="default"
    )
    client.create_app(DomainId=domain.id, UserProfileName=domain.user, AppType="KernelGateway", AppName="old")
    client.delete_app(DomainId=domain.id, UserProfileName=domain.user, AppType="KernelGateway", AppName="old")
    lab = sm.app(domain.id, "JupyterLab", space=domain.space)
    classic = sm.app(domain.id, "JupyterServer", user_profile=domain.user)
    old = sm.app(domain.id, "KernelGateway", user_profile=domain.user, app_name="old")
    sm.wait_for(lambda: lab.status() == classic.status() == "InService" and old.status() == "Deleted")
    before = _last_activity(sm, domain, "JupyterLab", space=domain.space)

    entries = await fleet_status(domain.id, now=now, endpoint_url=sm.endpoint_url, page_size=3)

    apps = _by_app(entries)
    assert set(apps) == {
        (domain.space, "JupyterLab", "default"),
        (domain.user, "JupyterServer", "default"),
        (domain.shared_space, "CodeEditor", "default"),
    }
    running = apps[(domain.space, "JupyterLab", "default")]
    assert running.agent is AgentState.RUNNING
    assert running.heartbeat is not None and running.heartbeat.verdict == "keep"
    assert running.idle_for(now) == timedelta(minutes=10)
    assert running.detail.startswith("idle since")
    absent = apps[(domain.user, "JupyterServer", "default")]
    assert (absent.agent, absent.detail) == (AgentState.NO_AGENT, "no .lamplighter/heartbeat.json")
    editor = apps[(domain.shared_space, "CodeEditor", "default")]
    assert (editor.agent, editor.app.status) == (AgentState.NOT_APPLICABLE, "InService")
    assert sm.operations().count("ListApps") == 2  # four apps (one Deleted), three per page
    # Reading the heartbeat is not activity.
    assert _last_activity(sm, domain, "JupyterLab", space=domain.space) == before

    # Four minutes on, a heartbeat interval of 60 s makes the same file stale.
    later = await fleet_status(domain.id, now=now + timedelta(minutes=4), endpoint_url=sm.endpoint_url)
    assert _by_app(later)[(domain.space, "JupyterLab", "default")].agent is AgentState.STALE

    # An app that cannot be read is "unknown", with the reason, and the others are still reported.
    sm.inject_error("CreatePresignedDomainUrl", "AccessDeniedException", "not authorized")
    mixed = await fleet_status(
        domain.id, now=now, endpoint_url=sm.endpoint_url, include_deleted=True, concurrency=1
    )
    apps = _by_app(mixed)
    assert apps[(domain.user, "JupyterServer", "default")].agent is AgentState.UNKNOWN
    assert "sagemaker:CreatePresignedDomainUrl" in apps[(domain.user, "JupyterServer", "default")].detail
    assert apps[(domain.space, "JupyterLab", "default")].agent is AgentState.RUNNING
    assert apps[(domain.user, "KernelGateway", "old")].app.status == "Deleted"

    # The command (in a thread: it runs its own event loop): a table, or JSON. It reads Code Editor
    # agents from CloudWatch Logs, where this app has logged nothing.
    with SideServices(sm) as side:
        for name, value in side.env().items():
            monkeypatch.setenv(name, value)
        assert await asyncio.to_thread(main, ["fleet", "status", "--sagemaker-domain", domain.id]) == 0
        table = capsys.readouterr().out
        assert "running" in table and "no agent" in table and "CodeEditor/default" in table
        assert (
            await asyncio.to_thread(main, ["fleet", "status", "--sagemaker-domain", domain.id, "--json"]) == 0
        )
        rows = {(r["app_type"], r["agent"]) for r in json.loads(capsys.readouterr().out)}
        assert rows == {("JupyterLab", "running"), ("JupyterServer", "no agent"), ("CodeEditor", "no agent")}


def test_heartbeat_parsing_is_strict() -> None:
    beat = Heartbeat.parse(
        {
            "version": 1,
            "target": "t",
            "pid": 1,
            "updated_at": "2026-01-01T12:00:00Z",
            "verdict": "stop",
            "idle_since": None,
            "stop_at": None,
            "reason": "r",
        }
    )
    assert beat.updated_at == datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert beat.idle_since is None
    for bad in (
        {"version": 2},
        {"version": 1, "verdict": "keep"},
        {"version": 1, "verdict": "x", "updated_at": "z"},
        [],
    ):
        with pytest.raises(MalformedAnswer):
            Heartbeat.parse(bad)
