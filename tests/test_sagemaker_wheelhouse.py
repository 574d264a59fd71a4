"""The wheelhouse (``lamplighter lcc bundle``) and the on-start script run for real against it, offline.

Building it downloads wheels for three Pythons (pip's cache makes later runs quick); everything after
that runs with no package index: a fresh virtual environment installs from the folder with
``--no-index``, and the rendered lifecycle script installs the real lamplighter from it and starts the
real agent. The script's other two field cases run too: no network at all, and a bad setting.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamplighter import __version__
from lamplighter.cli import main
from lamplighter.sagemaker.lcc import RenderOptions, render_on_start
from lamplighter.sagemaker.wheelhouse import MANIFEST, PYTHONS, upload_wheelhouse
from tests.emulators.sagemaker import SageMakerEmulator
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.emulators.conftest_sagemaker"]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    assert main(["lcc", "bundle", "--to", str(folder)]) == 0
    return folder


@pytest.fixture
def groups() -> Iterator[list[int]]:
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue


def test_manifest_lists_wheels_for_every_python_with_their_digests(wheelhouse: Path) -> None:
    manifest = json.loads((wheelhouse / MANIFEST).read_text())
    assert manifest["lamplighter"] == __version__
    assert set(manifest["pythons"]) == set(PYTHONS) == {"3.10", "3.11", "3.12"}
    for python, names in manifest["pythons"].items():
        tag = "cp" + python.replace(".", "")
        # The compiled dependencies come for each Python's own ABI (pyyaml and rpds-py failed offline).
        assert any(n.startswith("pyyaml-") and f"-{tag}-" in n for n in names), (python, names)
        assert any(n.startswith("rpds_py-") and f"-{tag}-" in n for n in names), (python, names)
        assert manifest["lamplighter_wheel"] in names
        assert all("manylinux" in n or n.endswith("-none-any.whl") or "abi3" in n for n in names)
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((wheelhouse / name).read_bytes()).hexdigest() == digest


def test_a_fresh_venv_installs_from_it_with_no_index(wheelhouse: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": "/dev/null"}
    installed = subprocess.run(
        [
            *(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index"),
            *("--find-links", str(wheelhouse), "lamplighter[sagemaker]"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=offline,
    )
    assert installed.returncode == 0, installed.stderr
    version = subprocess.run(
        [str(venv / "bin" / "lamplighter"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert __version__ in version.stdout + version.stderr
    boto = subprocess.run([str(venv / "bin" / "python"), "-c", "import boto3"], timeout=60)
    assert boto.returncode == 0


def test_upload_puts_the_wheels_and_manifest_under_the_prefix(
    wheelhouse: Path, sm: SageMakerEmulator
) -> None:
    import boto3

    s3 = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url=sm.endpoint_url)
    keys = upload_wheelhouse(wheelhouse, "s3://bucket/lamplighter/wheels", client=s3)
    assert "lamplighter/wheels/manifest.json" in keys
    assert sm._objects[("bucket", "lamplighter/wheels/manifest.json")] == (wheelhouse / MANIFEST).read_bytes()
    assert len(keys) == len(list(wheelhouse.glob("*.whl"))) + 1


def _run_script(tmp_path: Path, options: RenderOptions, extra_env: dict[str, str], groups: list[int]) -> str:
    script = tmp_path / "on-start.sh"
    script.write_text(render_on_start(options))
    log = tmp_path / "logs" / "app_container.log"
    log.parent.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "SOLUTION_DIR": str(tmp_path / "solution"),
        "LOG_FILE": str(log),
        "PIP_CONFIG_FILE": "/dev/null",
        **extra_env,
    }
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    setup = re.search(r"in the background \(pid (\d+)\)", done.stdout)
    assert setup, done.stdout
    groups.append(int(setup.group(1)))
    return str(log)


def test_script_installs_from_the_wheelhouse_and_a_bad_setting_stops_the_agent_once(
    wheelhouse: Path, tmp_path: Path, groups: list[int]
) -> None:
    options = RenderOptions("JupyterLab", wheelhouse=str(wheelhouse))
    log = Path(_run_script(tmp_path, options, {"IGNORE_CONNECTIONS": "maybe"}, groups))
    wait_until(
        lambda: "not restarting" in log.read_text() or "install failed" in log.read_text(),
        timeout_s=240,
        what="the real agent to start and stop on its bad setting",
    )
    text = log.read_text()
    assert "installed; starting the supervisor" in text, text
    assert "IGNORE_CONNECTIONS" in text and "expected true or false" in text
    assert text.count("configuration error") == 1
    assert "restarting in" not in text


def test_script_with_no_network_logs_the_failure_and_exits_0(tmp_path: Path, groups: list[int]) -> None:
    # A port that refuses: bound, never listening.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/simple"
        options = RenderOptions("CodeEditor", index_url=url)
        log = Path(_run_script(tmp_path, options, {}, groups))
        wait_until(lambda: "install failed" in log.read_text(), timeout_s=120, what="the install to fail")
    text = log.read_text()
    assert "the app runs without lamplighter" in text
    assert "supervising" not in text


def test_the_lambda_requirements_install_from_the_wheelhouse_with_no_index(
    wheelhouse: Path, tmp_path: Path
) -> None:
    """What ``sam build`` does with ``deploy/sam/function``: pip download -r for Lambda's platform."""
    function = tmp_path / "function"
    function.mkdir()
    requirements = Path(__file__).resolve().parents[1] / "deploy" / "sam" / "function" / "requirements.txt"
    shutil.copy(requirements, function / "requirements.txt")
    shutil.copytree(wheelhouse, function / "wheelhouse")
    pinned = [line for line in requirements.read_text().splitlines() if line.startswith("lamplighter")]
    assert pinned == [f"lamplighter[sagemaker]=={__version__}"]
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "-r", str(function / "requirements.txt")),
            *("--dest", str(tmp_path / "out"), "--only-binary=:all:", "--platform", "manylinux2014_x86_64"),
            *("--implementation", "cp", "--python-version", "3.12"),
        ],
        cwd=tmp_path,  # not the function folder: --find-links is taken relative to the file
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_CONFIG_FILE": "/dev/null"},
    )
    assert done.returncode == 0, done.stderr
    assert any(p.name.startswith(f"lamplighter-{__version__}-") for p in (tmp_path / "out").iterdir())
