"""The lifecycle configuration: the rendered on-start script (linted, and run locally), and its install."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamplighter.cli import main
from lamplighter.errors import ConfigError
from lamplighter.sagemaker.lcc import (
    MAX_CONTENT_CHARS,
    RenderOptions,
    default_lcc_name,
    install_lcc,
    render_on_start,
)
from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain
from tests.waiting import wait_until

pytest_plugins = ["tests.emulators.conftest_sagemaker"]

_SHELLCHECK = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "shellcheck"
_SUPERVISOR = re.compile(r"<<'LAMPLIGHTER_SUPERVISOR'\n(.*?)\nLAMPLIGHTER_SUPERVISOR\n", re.DOTALL)


def _lint(script: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(script)
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    shellcheck = str(_SHELLCHECK) if _SHELLCHECK.exists() else "shellcheck"
    linted = subprocess.run([shellcheck, "--severity=style", str(path)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("app_type", ["JupyterLab", "CodeEditor"])
def test_rendered_script_passes_bash_n_and_shellcheck(app_type: str, tmp_path: Path) -> None:
    script = render_on_start(RenderOptions(app_type, idle_time_s=900, wheelhouse="s3://bucket/wheels/"))
    _lint(script, tmp_path, "on-start.sh")
    supervisor = _SUPERVISOR.search(script)
    assert supervisor is not None
    _lint(supervisor.group(1) + "\n", tmp_path, "supervise.sh")
    assert len(base64.b64encode(script.encode())) <= MAX_CONTENT_CHARS
    assert 'IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-900}"' in script
    assert "watch --platform sagemaker" in script
    assert "crontab" not in script
    assert ("JL_BASE_URL" in script) is (app_type == "JupyterLab")
    assert ('LAMPLIGHTER_APP_TYPE="${LAMPLIGHTER_APP_TYPE:-code-editor}"' in script) is (
        app_type == "CodeEditor"
    )


def test_render_refuses_values_the_script_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="wheelhouse"):
        render_on_start(RenderOptions("JupyterLab", wheelhouse='s3://b/"; rm -rf ~; "'))
    with pytest.raises(ConfigError, match="log file"):
        render_on_start(RenderOptions("JupyterLab", log_file="/tmp/$(id).log"))
    with pytest.raises(ConfigError, match="app type"):
        render_on_start(RenderOptions("KernelGateway"))
    with pytest.raises(ConfigError, match="idle time"):
        render_on_start(RenderOptions("JupyterLab", idle_time_s=0))


_FAKE_PYTHON = """#!/bin/bash
# Stands in for Python: "-m venv DIR" makes DIR/bin/{python,lamplighter}; "-m pip ..." is recorded.
set -eu
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
    cp "$FAKE_DIR/agent" "$3/bin/lamplighter"
    exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
    shift 2
    printf '%s\\n' "$*" >>"$FAKE_DIR/pip.txt"
    exit 0
fi
exit 1
"""

_FAKE_AGENT = """#!/bin/bash
# Stands in for lamplighter: the first run crashes, the second records how it was started and stays.
runs=$(( $(cat "$FAKE_DIR/runs" 2>/dev/null || echo 0) + 1 ))
echo "$runs" >"$FAKE_DIR/runs"
echo "agent run $runs: $*"
if [ "$runs" -eq 1 ]; then
    exit 3
fi
env >"$FAKE_DIR/agent-env.tmp" && mv "$FAKE_DIR/agent-env.tmp" "$FAKE_DIR/agent-env.txt"
exec sleep 300
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    wait_until(predicate, timeout_s=timeout_s, what="the supervised processes")


@pytest.fixture
def supervisors() -> Iterator[list[int]]:
    """Process groups started by the scripts under test; killed afterwards."""
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        _wait(lambda pid=pid: not _alive(pid), 10)  # type: ignore[misc]


def test_on_start_script_installs_and_supervises_the_agent(tmp_path: Path, supervisors: list[int]) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "python").write_text(_FAKE_PYTHON)
    (fake / "agent").write_text(_FAKE_AGENT)
    for name in ("python", "agent"):
        (fake / name).chmod(stat.S_IRWXU)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "logs").mkdir()
    script = tmp_path / "on-start.sh"
    script.write_text(
        render_on_start(RenderOptions("JupyterLab", idle_time_s=900, wheelhouse=str(tmp_path / "wheels")))
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "FAKE_DIR": str(fake),
        "PYTHON": str(fake / "python"),
        "SOLUTION_DIR": str(tmp_path / "solution"),
        "LOG_FILE": str(tmp_path / "logs" / "app_container.log"),
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/test",
    }

    def run_script() -> int:
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        match = re.search(r"\(pid (\d+)\)", done.stdout)
        assert match, done.stdout
        supervisors.append(int(match.group(1)))
        return int(match.group(1))

    supervisor = run_script()
    pip = (fake / "pip.txt").read_text()
    assert f"install --quiet --disable-pip-version-check --no-index --find-links {tmp_path / 'wheels'}" in pip
    assert pip.rstrip().endswith("lamplighter[sagemaker]==0.1.0")

    # The agent crashed once and was restarted by the supervisor, which outlives the script.
    _wait(lambda: (fake / "agent-env.txt").exists())
    assert _alive(supervisor)
    agent_env = dict(
        line.split("=", 1) for line in (fake / "agent-env.txt").read_text().splitlines() if "=" in line
    )
    assert agent_env["IDLE_TIME_IN_SECONDS"] == "900"
    assert agent_env["IGNORE_CONNECTIONS"] == "True"
    assert agent_env["SKIP_TERMINALS"] == "False"
    assert agent_env["JL_BASE_URL"] == "/jupyterlab/default/"
    assert agent_env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] == "/v2/credentials/test"
    log = (tmp_path / "logs" / "app_container.log").read_text()
    assert "agent run 1: watch --platform sagemaker" in log
    assert "lamplighter watch exited with status 3; restarting in 1s" in log

    # Running the script again does not start a second supervisor: the first holds the lock.
    second = run_script()
    _wait(lambda: not _alive(second))
    assert _alive(supervisor)
    assert (fake / "runs").read_text().strip() == "2"


async def test_install_makes_the_config_the_domain_default(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    client = sm.client()
    client.update_domain(
        DomainId=domain.id,
        DefaultUserSettings={
            "JupyterLabAppSettings": {
                "DefaultResourceSpec": {"InstanceType": "ml.t3.large"},
                "CodeRepositories": [{"RepositoryUrl": "https://example.com/repo.git"}],
            }
        },
    )
    script = render_on_start(RenderOptions("JupyterLab"))
    result = await install_lcc(
        script, domain_id=domain.id, app_type="JupyterLab", endpoint_url=sm.endpoint_url
    )

    assert result.lcc_name == default_lcc_name("JupyterLab", script)
    assert [call.operation for call in result.calls] == ["CreateStudioLifecycleConfig", "UpdateDomain"]
    settings = client.describe_domain(DomainId=domain.id)["DefaultUserSettings"]
    lab = settings["JupyterLabAppSettings"]
    assert lab["LifecycleConfigArns"] == [result.lcc_arn]
    assert lab["DefaultResourceSpec"] == {"InstanceType": "ml.t3.large", "LifecycleConfigArn": result.lcc_arn}
    assert lab["CodeRepositories"] == [{"RepositoryUrl": "https://example.com/repo.git"}]
    assert settings["ExecutionRole"].endswith("StudioExecutionRole")
    stored = client.describe_studio_lifecycle_config(StudioLifecycleConfigName=result.lcc_name)
    assert base64.b64decode(stored["StudioLifecycleConfigContent"]).decode() == script
    assert stored["StudioLifecycleConfigAppType"] == "JupyterLab"

    # Installing the same script again reuses the configuration and does not list it twice.
    again = await install_lcc(
        script, domain_id=domain.id, app_type="JupyterLab", endpoint_url=sm.endpoint_url
    )
    assert again.reused and again.lcc_arn == result.lcc_arn
    assert [call.operation for call in again.calls] == ["UpdateDomain"]
    lab = client.describe_domain(DomainId=domain.id)["DefaultUserSettings"]["JupyterLabAppSettings"]
    assert lab["LifecycleConfigArns"] == [result.lcc_arn]


async def test_install_for_one_user_profile(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    script = render_on_start(RenderOptions("CodeEditor"))
    result = await install_lcc(
        script,
        domain_id=domain.id,
        app_type="CodeEditor",
        user_profile=domain.user,
        endpoint_url=sm.endpoint_url,
    )
    assert result.target == f"user profile {domain.user} in {domain.id}"
    client = sm.client()
    editor = client.describe_user_profile(DomainId=domain.id, UserProfileName=domain.user)["UserSettings"][
        "CodeEditorAppSettings"
    ]
    assert editor["DefaultResourceSpec"]["LifecycleConfigArn"] == result.lcc_arn
    assert "CodeEditorAppSettings" not in client.describe_domain(DomainId=domain.id)["DefaultUserSettings"]


async def test_install_dry_run_writes_nothing(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    script = render_on_start(RenderOptions("JupyterLab"))
    result = await install_lcc(
        script, domain_id=domain.id, app_type="JupyterLab", endpoint_url=sm.endpoint_url, dry_run=True
    )
    assert result.dry_run
    assert (
        result.lcc_arn
        == f"arn:aws:sagemaker:us-east-1:123456789012:studio-lifecycle-config/{result.lcc_name}"
    )
    assert [call.operation for call in result.calls] == ["CreateStudioLifecycleConfig", "UpdateDomain"]
    assert set(sm.operations()) == {
        "CreateDomain",
        "CreateUserProfile",
        "CreateSpace",
        "DescribeDomain",
        "DescribeStudioLifecycleConfig",
    }
    shown = result.calls[0].display()
    assert shown["StudioLifecycleConfigContent"].startswith("<base64 on-start script")


async def test_install_refuses_to_reuse_a_name_with_other_content(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    await install_lcc(
        "#!/bin/bash\necho one\n",
        domain_id=domain.id,
        app_type="JupyterLab",
        name="mine",
        endpoint_url=sm.endpoint_url,
    )
    with pytest.raises(ConfigError, match="already exists with other content"):
        await install_lcc(
            "#!/bin/bash\necho two\n",
            domain_id=domain.id,
            app_type="JupyterLab",
            name="mine",
            endpoint_url=sm.endpoint_url,
        )
    with pytest.raises(ConfigError, match="SageMaker takes 16384"):
        await install_lcc(
            "#" * 13000, domain_id=domain.id, app_type="JupyterLab", endpoint_url=sm.endpoint_url
        )


def test_cli_render_and_dry_run_install(
    sm: SageMakerEmulator, domain: StudioDomain, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["lcc", "render", "--app-type", "JupyterLab", "--idle-time", "15m", "--skip-terminals"]) == 0
    script = capsys.readouterr().out
    assert 'IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-900}"' in script
    assert 'SKIP_TERMINALS="${SKIP_TERMINALS:-True}"' in script

    code = main(["lcc", "install", "--domain", domain.id, "--app-type", "CodeEditor", "--dry-run", "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True
    assert [c["operation"] for c in plan["calls"]] == ["CreateStudioLifecycleConfig", "UpdateDomain"]
    assert "UpdateDomain" not in sm.operations()

    assert main(["lcc", "install", "--domain", "d-missing", "--app-type", "CodeEditor"]) != 0
    assert "ResourceNotFound" in capsys.readouterr().err
