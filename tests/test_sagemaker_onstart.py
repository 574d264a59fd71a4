"""On-start: a CreateApp event through the Lambda handler, and ``lamplighter on-start``, against the emulator.

Each script really runs in a terminal of the app's real Jupyter server, reached through the emulated
presigned login; the SAM template that deploys the handler is checked with cfn-lint.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamplighter.aws_lambda import handler
from lamplighter.cli import main
from lamplighter.errors import ConfigError
from lamplighter.journal import Journal
from lamplighter.sagemaker.aws_lambda import OnStartConfig, app_from_event
from lamplighter.sagemaker.identity import AppIdentity
from lamplighter.sagemaker.onstart import run_on_start
from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain, aws_env

pytest_plugins = ["tests.emulators.conftest_sagemaker"]

_ROOT = Path(__file__).resolve().parents[1]
_TEMPLATE = _ROOT / "deploy" / "sam" / "template.yaml"


class _Context:
    """The part of the Lambda context the handler reads."""

    def __init__(self, remaining_s: float) -> None:
        self._remaining_ms = int(remaining_s * 1000)

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def _create_app_event(domain_id: str, owner: dict[str, str], app_type: str = "JupyterLab") -> dict[str, Any]:
    """A CloudTrail CreateApp call as EventBridge delivers it (the envelope of research/remote.md §6.3)."""
    return {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-01-01T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "eventVersion": "1.08",
            "eventSource": "sagemaker.amazonaws.com",
            "eventName": "CreateApp",
            "awsRegion": "us-east-1",
            "requestParameters": {"domainId": domain_id, "appType": app_type, "appName": "default", **owner},
            "responseElements": {"appArn": f"arn:aws:sagemaker:us-east-1:123456789012:app/{domain_id}/x"},
            "eventType": "AwsApiCall",
            "managementEvent": True,
        },
    }


@dataclass(frozen=True)
class _Studio:
    sm: SageMakerEmulator
    domain: StudioDomain
    created: dict[str, Any]  # the CreateApp event of the running app


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Studio]:
    """One emulated domain whose JupyterLab space app receives several on-start runs (one server start)."""
    with (
        pytest.MonkeyPatch.context() as patch,
        SageMakerEmulator(tmp_path_factory.mktemp("studio"), pending_s=0.05, deleting_s=0.1) as sm,
    ):
        for name, value in aws_env(sm.endpoint_url).items():
            patch.setenv(name, value)
        domain = StudioDomain(sm.add_domain())
        sm.add_user_profile(domain.id, domain.user)
        sm.add_space(domain.id, domain.space, owner=domain.user)
        # CreateApp is called and CloudTrail reports it: the first run starts while the app is Pending.
        sm.client().create_app(
            DomainId=domain.id, SpaceName=domain.space, AppType="JupyterLab", AppName="default"
        )
        yield _Studio(sm, domain, _create_app_event(domain.id, {"spaceName": domain.space}))


def test_create_app_event_runs_the_script_and_records_the_exit_status(
    studio: _Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "LAMPLIGHTER_ONSTART_SCRIPT", "echo setting up for $USER-less app\ntouch configured.txt\n"
    )
    monkeypatch.setenv("LAMPLIGHTER_ONSTART_READY_TIMEOUT", "60")

    result = handler(studio.created, _Context(remaining_s=120))

    assert result["status"] == "ok", result
    assert result["exit_code"] == 0
    assert "setting up for -less app" in result["output_tail"]
    assert result["app"] == f"{studio.domain.id}/space:{studio.domain.space}/JupyterLab/default"
    assert (studio.sm.home(studio.domain.id, studio.domain.space) / "configured.txt").exists()


def test_a_failing_script_is_recorded_with_its_status(
    studio: _Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMPLIGHTER_ONSTART_SCRIPT", "echo about to fail >&2\nexit 7\n")
    failed = handler(studio.created, _Context(remaining_s=120))
    assert failed["status"] == "failed"
    assert failed["exit_code"] == 7
    assert "about to fail" in failed["output_tail"]


def test_cli_on_start_records_in_the_journal(
    studio: _Studio, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok_script = tmp_path / "ok.sh"
    ok_script.write_text("pwd\necho hello from on-start\n")
    bad_script = tmp_path / "bad.sh"
    bad_script.write_text("echo broken\nfalse\n")
    journal = tmp_path / "journal.sqlite3"
    domain = studio.domain
    common = ["--domain", domain.id, "--space", domain.space, "--app-type", "JupyterLab"]
    common += ["--journal", str(journal), "--ready-timeout", "60"]

    assert main(["on-start", *common, "--script", str(ok_script)]) == 0
    streamed = capsys.readouterr()
    assert "hello from on-start" in streamed.out
    assert "succeeded" in streamed.err

    assert main(["on-start", *common, "--script", str(bad_script), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["exit_code"], report["ok"], report["space"]) == (1, False, domain.space)

    with Journal(journal) as records:
        events = records.events(kind="onstart")
    assert [(e.verdict, e.detail["exit_code"]) for e in events] == [("ok", 0), ("failed", 1)]
    assert all(e.target == f"{domain.id}/space:{domain.space}/JupyterLab/default" for e in events)
    assert "hello from on-start" in events[0].detail["output_tail"]


def test_handler_skips_and_reports_without_raising(
    sm: SageMakerEmulator, domain: StudioDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMPLIGHTER_ONSTART_SCRIPT", "true")
    code_editor = _create_app_event(domain.id, {"spaceName": domain.space}, app_type="CodeEditor")
    assert handler(code_editor, None)["status"] == "skipped"
    failed_call = _create_app_event(domain.id, {"spaceName": domain.space})
    failed_call["detail"]["errorCode"] = "ResourceLimitExceeded"
    assert handler(failed_call, None)["status"] == "skipped"

    # The app fails to start: a clear error, no retry-triggering exception.
    sm.fail_next_app("InternalFailure: image pull failed")
    sm.client().create_app(
        DomainId=domain.id, SpaceName=domain.space, AppType="JupyterLab", AppName="default"
    )
    result = handler(_create_app_event(domain.id, {"spaceName": domain.space}), _Context(remaining_s=60))
    assert result["status"] == "error"
    assert "failed to start: InternalFailure: image pull failed" in result["error"]

    monkeypatch.delenv("LAMPLIGHTER_ONSTART_SCRIPT")
    result = handler(_create_app_event(domain.id, {"spaceName": domain.space}), None)
    assert result["status"] == "error"
    assert "LAMPLIGHTER_ONSTART_SCRIPT" in result["error"]


def test_the_script_comes_from_configuration_never_the_event(
    sm: SageMakerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamplighter.sagemaker.aws_lambda import load_script

    sm.put_object("setup-bucket", "scripts/on-start.sh", b"echo from s3\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", sm.endpoint_url)
    config = OnStartConfig.from_env(
        {"LAMPLIGHTER_ONSTART_SCRIPT_URI": "s3://setup-bucket/scripts/on-start.sh"}
    )
    assert load_script(config) == "echo from s3\n"
    missing = OnStartConfig.from_env({"LAMPLIGHTER_ONSTART_SCRIPT_URI": "s3://setup-bucket/nope.sh"})
    with pytest.raises(ConfigError, match="NoSuchKey"):
        load_script(missing)
    with pytest.raises(ConfigError, match="exactly one"):
        OnStartConfig.from_env(
            {"LAMPLIGHTER_ONSTART_SCRIPT": "a", "LAMPLIGHTER_ONSTART_SCRIPT_URI": "s3://b/k"}
        )
    with pytest.raises(ConfigError, match="no Jupyter server"):
        OnStartConfig.from_env(
            {"LAMPLIGHTER_ONSTART_SCRIPT": "a", "LAMPLIGHTER_ONSTART_APP_TYPES": "CodeEditor"}
        )

    config = OnStartConfig.from_env(
        {"LAMPLIGHTER_ONSTART_SCRIPT": "true", "LAMPLIGHTER_ONSTART_DOMAINS": "d-mine"}
    )
    # The bare requestParameters (an InputPath target) work too; a script in the event is ignored.
    params = {
        "domainId": "d-mine",
        "userProfileName": "bob",
        "appType": "JupyterServer",
        "script": "rm -rf ~",
    }
    assert app_from_event(params, config) == AppIdentity("d-mine", "JupyterServer", user_profile_name="bob")
    assert not hasattr(config, "script_from_event")


async def test_run_on_start_refuses_apps_without_jupyter() -> None:
    with pytest.raises(ConfigError, match="needs a Jupyter app"):
        await run_on_start(AppIdentity("d-1", "CodeEditor", space_name="s"), "true")
    with pytest.raises(ConfigError, match="empty"):
        await run_on_start(AppIdentity("d-1", "JupyterLab", space_name="s"), "  \n")


def test_sam_template_passes_cfn_lint_and_matches_only_successful_create_app() -> None:
    cfn_lint = _ROOT / ".venv" / "bin" / "cfn-lint"
    linted = subprocess.run(
        [str(cfn_lint) if cfn_lint.exists() else "cfn-lint", str(_TEMPLATE)], capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr

    class _Loader(yaml.SafeLoader):
        pass

    def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        return {suffix: None}

    yaml.add_multi_constructor("!", _tag, Loader=_Loader)
    template = yaml.load(_TEMPLATE.read_text(), Loader=_Loader)
    function = template["Resources"]["OnStartFunction"]["Properties"]
    assert function["Handler"] == "lamplighter.aws_lambda.handler"
    pattern = function["Events"]["CreateApp"]["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.sagemaker"]
    assert pattern["detail"]["eventSource"] == ["sagemaker.amazonaws.com"]
    assert pattern["detail"]["eventName"] == ["CreateApp"]
    assert pattern["detail"]["errorCode"] == [{"exists": False}]
    actions = {
        statement["Action"] if isinstance(statement["Action"], str) else tuple(statement["Action"])
        for policy in template["Resources"]["OnStartRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    }
    assert actions == {
        ("logs:CreateLogStream", "logs:PutLogEvents"),
        "sagemaker:DescribeApp",
        "sagemaker:DescribeSpace",
        "sagemaker:DescribeUserProfile",
        "sagemaker:CreatePresignedDomainUrl",
    }
    # The optional parts: the trail, a KMS-encrypted script bucket, a VPC (all off by default).
    parameters = template["Parameters"]
    assert parameters["CreateTrail"]["AllowedValues"] == ["true", "false"]
    for name in ("ScriptKmsKeyArn", "SubnetIds", "SecurityGroupIds", "SageMakerEndpointUrl"):
        assert parameters[name]["Default"] == "", name
    assert template["Resources"]["Trail"]["Condition"] == "MakeTrail"
    assert template["Resources"]["VpcAccessPolicy"]["Condition"] == "InVpc"
    assert {"HasKmsKey", "InVpc", "MakeTrail"} <= set(template["Conditions"])
    assert "VpcConfig" in function
    # The function is built from this checkout's wheelhouse, never from a package index.
    requirements = (_TEMPLATE.parent / "function" / "requirements.txt").read_text().split("\n")
    assert "--no-index" in requirements and "--find-links wheelhouse" in requirements
