"""The lifecycle configuration: the rendered on-start script (linted, and run locally), and its install."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
_SETUP = re.compile(r"<<'LAMPLIGHTER_SETUP'\n(.*?)\nLAMPLIGHTER_SETUP\n", re.DOTALL)


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
    setup = _SETUP.search(script)
    assert setup is not None
    _lint(setup.group(1) + "\n", tmp_path, "setup.sh")
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
# Stands in for Python: "-m venv DIR" makes DIR/bin/{python,lamplighter}; "-m pip ..." is recorded and
# then does what $FAKE_DIR/pip-does says (nothing, "fail" or "hang").
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
    case "$(cat "$FAKE_DIR/pip-does" 2>/dev/null)" in
        fail) echo "ERROR: No matching distribution found for lamplighter" >&2; exit 1 ;;
        hang) exec sleep 60 ;;
    esac
    exit 0
fi
exit 1
"""

_FAKE_AGENT = """#!/bin/bash
# Stands in for lamplighter: exits with $FAKE_DIR/agent-exit on its first run (3: a crash), records
# how it was started on the second and stays.
runs=$(( $(cat "$FAKE_DIR/runs" 2>/dev/null || echo 0) + 1 ))
echo "$runs" >"$FAKE_DIR/runs"
echo "agent run $runs: $*"
if [ "$runs" -eq 1 ]; then
    code="$(cat "$FAKE_DIR/agent-exit" 2>/dev/null || echo 3)"
    [ "$code" = 2 ] && echo "lamplighter: ignore_connections (IGNORE_CONNECTIONS): expected true or false"
    exit "$code"
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


@dataclass
class _Run:
    """One rendered script run locally against the fakes: its folders and the process groups it left."""

    tmp: Path
    fake: Path
    script: Path
    env: dict[str, str]
    groups: list[int]

    @property
    def log(self) -> str:
        path = self.tmp / "logs" / "app_container.log"
        return path.read_text() if path.exists() else ""

    def run(self, limit_s: float = 30) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", str(self.script)], env=self.env, capture_output=True, text=True, timeout=limit_s
        )
        assert done.returncode == 0, done.stdout + done.stderr
        setup = re.search(r"in the background \(pid (\d+)\)", done.stdout)
        assert setup, done.stdout
        self.groups.append(int(setup.group(1)))
        return done

    def supervisor(self) -> int:
        _wait(lambda: "supervising lamplighter watch (pid" in self.log)
        found = re.search(r"supervising lamplighter watch \(pid (\d+)\)", self.log)
        assert found
        self.groups.append(int(found.group(1)))
        return int(found.group(1))


@pytest.fixture
def local_run(tmp_path: Path, supervisors: list[int]) -> _Run:
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
    return _Run(tmp_path, fake, script, env, supervisors)


def test_on_start_script_installs_and_supervises_the_agent(local_run: _Run) -> None:
    local_run.run()
    supervisor = local_run.supervisor()
    pip = (local_run.fake / "pip.txt").read_text()
    assert f"--no-index --find-links {local_run.tmp / 'wheels'}" in pip
    assert pip.rstrip().endswith("lamplighter[sagemaker]==0.1.0")

    # The agent crashed once and was restarted by the supervisor, which outlives the script.
    _wait(lambda: (local_run.fake / "agent-env.txt").exists())
    assert _alive(supervisor)
    agent_env = dict(
        line.split("=", 1)
        for line in (local_run.fake / "agent-env.txt").read_text().splitlines()
        if "=" in line
    )
    assert agent_env["IDLE_TIME_IN_SECONDS"] == "900"
    assert agent_env["IGNORE_CONNECTIONS"] == "True"
    assert agent_env["SKIP_TERMINALS"] == "False"
    assert agent_env["JL_BASE_URL"] == "/jupyterlab/default/"
    assert agent_env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] == "/v2/credentials/test"
    log = local_run.log
    assert "lamplighter-lcc: installing lamplighter[sagemaker]==0.1.0" in log  # each step in the app's log
    assert "agent run 1: watch --platform sagemaker" in log
    assert "lamplighter watch exited with status 3; restarting in 1s" in log

    # Running the script again does not start a second supervisor: the first holds the lock.
    local_run.run()
    setup = local_run.groups[-1]
    _wait(lambda: not _alive(setup))
    assert _alive(supervisor)
    assert (local_run.fake / "runs").read_text().strip() == "2"


def test_a_failed_install_still_lets_the_app_start(local_run: _Run) -> None:
    (local_run.fake / "pip-does").write_text("fail")
    local_run.run()
    _wait(lambda: "the install failed" in local_run.log)
    assert "the install failed (status 1, output above): the app runs without lamplighter" in local_run.log
    assert "No matching distribution found" in local_run.log
    assert not (local_run.fake / "runs").exists()


def test_a_slow_install_moves_to_the_background_past_its_budget(local_run: _Run) -> None:
    (local_run.fake / "pip-does").write_text("hang")
    local_run.env["INSTALL_BUDGET_S"] = "1"
    began = time.monotonic()
    done = local_run.run(limit_s=20)
    assert time.monotonic() - began < 10
    assert (
        "the install is still running after 1s; the app starts, and the agent once it is done" in done.stdout
    )
    assert "still running after 1s" in local_run.log
    assert _alive(local_run.groups[-1])  # the install goes on


def test_the_supervisor_gives_up_on_a_configuration_error(local_run: _Run) -> None:
    (local_run.fake / "agent-exit").write_text("2")
    local_run.env["IGNORE_CONNECTIONS"] = "maybe"
    local_run.run()
    supervisor = local_run.supervisor()
    _wait(lambda: not _alive(supervisor))
    log = local_run.log
    assert "expected true or false" in log
    assert log.count("not restarting until the app restarts") == 1
    assert "restarting in" not in log
    assert (local_run.fake / "runs").read_text().strip() == "1"


def test_render_refuses_to_install_from_pypi_where_lamplighter_is_not_published() -> None:
    with pytest.raises(ConfigError, match="not published on PyPI"):
        render_on_start(RenderOptions("JupyterLab"))
    mirror = render_on_start(RenderOptions("JupyterLab", index_url="https://pypi.example.internal/simple"))
    assert 'LAMPLIGHTER_INDEX_URL="${LAMPLIGHTER_INDEX_URL:-https://pypi.example.internal/simple}"' in mirror
    with pytest.raises(ConfigError, match="install budget"):
        render_on_start(RenderOptions("JupyterLab", index_url="https://m/simple", install_budget_s=400))


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
    script = render_on_start(RenderOptions("JupyterLab", wheelhouse="s3://b/w/"))
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


async def test_install_covers_shared_spaces_and_reports_sagemakers_own_idle_shutdown(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    client = sm.client()
    idle = {"IdleSettings": {"LifecycleManagement": "ENABLED", "IdleTimeoutInMinutes": 120}}
    client.update_domain(
        DomainId=domain.id,
        DefaultSpaceSettings={
            "ExecutionRole": "arn:aws:iam::123456789012:role/SpaceRole",
            "JupyterLabAppSettings": {"AppLifecycleManagement": idle},
        },
    )
    script = render_on_start(RenderOptions("JupyterLab", wheelhouse="s3://b/w/"))
    result = await install_lcc(
        script, domain_id=domain.id, app_type="JupyterLab", endpoint_url=sm.endpoint_url
    )

    described = client.describe_domain(DomainId=domain.id)
    space = described["DefaultSpaceSettings"]
    assert space["JupyterLabAppSettings"]["LifecycleConfigArns"] == [result.lcc_arn]
    assert space["JupyterLabAppSettings"]["DefaultResourceSpec"]["LifecycleConfigArn"] == result.lcc_arn
    assert space["JupyterLabAppSettings"]["AppLifecycleManagement"] == idle  # kept
    assert space["ExecutionRole"].endswith("role/SpaceRole")  # the rest of the space defaults kept
    assert described["DefaultUserSettings"]["JupyterLabAppSettings"]["LifecycleConfigArns"] == [
        result.lcc_arn
    ]
    assert "shared-space defaults" in result.target
    assert len(result.notes) == 1
    assert "SageMaker's own idle shutdown is enabled in the domain's shared-space defaults" in result.notes[0]
    assert "after 120 idle minutes" in result.notes[0]

    # Code Editor: SageMaker's DefaultSpaceSettings cannot hold it, and the result says so.
    editor = render_on_start(RenderOptions("CodeEditor", wheelhouse="s3://b/w/"))
    other = await install_lcc(
        editor, domain_id=domain.id, app_type="CodeEditor", endpoint_url=sm.endpoint_url
    )
    assert any("DefaultSpaceSettings has no CodeEditorAppSettings" in note for note in other.notes)
    assert "CodeEditorAppSettings" not in client.describe_domain(DomainId=domain.id)["DefaultSpaceSettings"]


async def test_install_for_one_user_profile(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    script = render_on_start(RenderOptions("CodeEditor", wheelhouse="s3://b/w/"))
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
    script = render_on_start(RenderOptions("JupyterLab", wheelhouse="s3://b/w/"))
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
    assert main(["lcc", "render", "--app-type", "JupyterLab", "--idle-time", "15m", "--skip-terminals"]) == 2
    assert "not published on PyPI" in capsys.readouterr().err
    render = ["lcc", "render", "--app-type", "JupyterLab", "--wheelhouse", "s3://b/w/"]
    assert main([*render, "--idle-time", "15m", "--skip-terminals"]) == 0
    script = capsys.readouterr().out
    assert 'IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-900}"' in script
    assert 'SKIP_TERMINALS="${SKIP_TERMINALS:-True}"' in script

    code = main(
        [
            *("lcc", "install", "--domain", domain.id, "--app-type", "CodeEditor"),
            *("--wheelhouse", "s3://b/w/", "--dry-run", "--json"),
        ]
    )
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True
    assert [c["operation"] for c in plan["calls"]] == ["CreateStudioLifecycleConfig", "UpdateDomain"]
    assert "UpdateDomain" not in sm.operations()

    assert (
        main(
            [
                "lcc",
                "install",
                "--domain",
                "d-missing",
                "--app-type",
                "CodeEditor",
                "--index-url",
                "https://m/s",
            ]
        )
        != 0
    )
    assert "ResourceNotFound" in capsys.readouterr().err


def test_bundle_refuses_bad_input_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lcc", "bundle", "--to", str(tmp_path / "w"), "--python", "2.7"]) == 2
    assert "--python: expected versions like 3.10,3.11,3.12" in capsys.readouterr().err
    assert main(["lcc", "bundle", "--to", str(tmp_path / "w"), "--source", str(tmp_path)]) == 2
    assert "builds lamplighter from a source checkout" in capsys.readouterr().err
    assert main(["lcc", "bundle", "--to", "s3://", "--source", str(tmp_path)]) == 2
    assert not (tmp_path / "w").exists()
