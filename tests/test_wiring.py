"""The wiring table: every kind of app the settings accept has a row, and --action picks the stopper."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from lamplighter.errors import ConfigError
from lamplighter.model import Decision, StopResult
from lamplighter.platforms.jupyter import JupyterShutdown
from lamplighter.remote.connection import Connection
from lamplighter.settings import APP_TYPES, PLATFORMS, Settings, load_settings
from lamplighter.stoppers import CommandStopper, DryRun, NoStop, ProcessStopper
from lamplighter.wiring import ROWS, build_stopper, row_for


class _InProcess:
    description = "in-server shutdown"

    async def stop(self, decision: Decision) -> StopResult:
        raise AssertionError("not called here")


def _settings(**flags: str) -> Settings:
    return load_settings({"url": "http://127.0.0.1:1/", **flags}, env={})


def test_every_platform_and_app_type_has_a_row() -> None:
    assert set(ROWS) == set(itertools.product(PLATFORMS, APP_TYPES))


def test_the_action_picks_the_stopper() -> None:
    conn = Connection("http://127.0.0.1:1/")
    assert isinstance(build_stopper(_settings(action="none"), conn, "t"), NoStop)
    command = build_stopper(_settings(action="command", command="true"), conn, "t")
    assert isinstance(command, CommandStopper)
    assert isinstance(build_stopper(_settings(), conn, "t"), JupyterShutdown)
    assert isinstance(build_stopper(_settings(dry_run="true"), conn, "t"), DryRun)


def test_in_server_mode_stops_in_process_only_where_the_stop_is_a_server_shutdown() -> None:
    own = _InProcess()
    assert build_stopper(_settings(), None, "t", in_process=own) is own
    wrapped = build_stopper(_settings(dry_run="true"), None, "t", in_process=own)
    assert isinstance(wrapped, DryRun) and "in-server shutdown" in wrapped.description
    command = build_stopper(_settings(action="command", command="true"), None, "t", in_process=own)
    assert isinstance(command, CommandStopper)


def test_a_plain_code_server_is_stopped_through_its_port() -> None:
    stopper = build_stopper(_settings(app_type="code-editor", editor_port="8080"), None, "t")
    assert isinstance(stopper, ProcessStopper)
    with pytest.raises(ConfigError, match="editor_port"):
        build_stopper(_settings(app_type="code-editor"), None, "t")


def test_sagemaker_rows_follow_the_metadata(tmp_path: Path) -> None:
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(
        '{"AppType": "CodeEditor", "DomainId": "d-1", "SpaceName": "s", "ResourceName": "default",'
        ' "ResourceArn": "arn:aws:sagemaker:us-east-1:111122223333:app/d-1/s/CodeEditor/default"}'
    )
    flags = {"platform": "sagemaker", "sagemaker_metadata": str(metadata)}
    row, resolved = row_for(load_settings(flags, env={}))
    assert (resolved.app_type, resolved.editor_port) == ("code-editor", 8888)
    assert row is ROWS[("sagemaker", "code-editor")]
