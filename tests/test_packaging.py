"""The package as users get it: what the sdist and the wheel hold, and the documented way to enable the extension.

The distributions are built once per module with ``python -m build`` (the sdist, then the wheel from the
sdist, as ``make dist`` does), so a file the sdist forgets shows up as a broken wheel here too.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SERVER_CONFIG = "etc/jupyter/jupyter_server_config.d/lamplighter.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return _ANSI.sub("", done.stdout + done.stderr)


@pytest.fixture(scope="module")
def pip_cache() -> str:
    # Read before the per-test HOME moves it: the fresh venv installs from the wheels cached here.
    return _run(sys.executable, "-m", "pip", "cache", "dir").strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, pip_cache: str) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


def _only(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def _wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def test_sdist_holds_the_sources_and_nothing_local(dist: Path) -> None:
    with tarfile.open(_only(dist, "*.tar.gz")) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "LICENSE",
        "README.md",
        "jupyter-config/server-config/lamplighter.json",
        "src/lamplighter/extension.py",
        "src/lamplighter/sagemaker/templates/lcc-on-start.sh",
        "tests/conftest.py",
    ):
        assert needed in names, needed
    local = [
        n
        for n in names
        if re.search(r"(^|/)(\.venv[^/]*|__pycache__|\.pytest_cache|\.mypy_cache|\.hypothesis|dist)/", n)
        or n.startswith("bench/results")
    ]
    assert not local, local


def test_wheel_ships_the_extension_disabled_and_the_license(dist: Path) -> None:
    wheel = _only(dist, "*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (config,) = [n for n in names if n.endswith(".data/data/" + SERVER_CONFIG)]
        # Opt-in: installing the package must never make a server start stopping itself.
        assert json.loads(zf.read(config)) == {"ServerApp": {"jpserver_extensions": {"lamplighter": False}}}
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert "Apache License\n                           Version 2.0" in zf.read(license_file).decode()
        assert "lamplighter/py.typed" in names and "lamplighter/sagemaker/templates/lcc-on-start.sh" in names
    meta = _wheel_metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    assert "Framework :: Jupyter" in classifiers
    assert {f"Programming Language :: Python :: 3.{v}" for v in range(10, 14)} <= set(classifiers)
    # PEP 639: a License :: classifier next to a license expression is an error for PyPI.
    assert not [c for c in classifiers if c.startswith("License ::")]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Issues", "Source"}


def test_twine_accepts_both_distributions(dist: Path) -> None:
    out = _run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    assert out.count("PASSED") == 2, out


def _extension_state(jupyter: Path, env: dict[str, str], config_dir: Path) -> str:
    """What ``jupyter server extension list`` says of lamplighter under ``config_dir``: the lines of its section."""
    out = _run(jupyter, "server", "extension", "list", env=env)
    sections = {
        head.strip(): body for head, _, body in (s.partition("\n") for s in out.split("Config dir: ")[1:])
    }
    return sections[str(config_dir)]


@pytest.mark.slow  # a fresh venv from the wheel (jupyter_server from the pip cache), then a real server
@pytest.mark.timeout(300)  # ~45 s with a warm pip cache; a cold one downloads jupyter_server's tree
def test_extension_enable_and_disable_in_a_fresh_venv(dist: Path, pip_cache: str, tmp_path: Path) -> None:
    venv = tmp_path.resolve() / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON"))}
    env.update(PIP_CACHE_DIR=pip_cache, JUPYTER_CONFIG_DIR=str(tmp_path / "user-config"))
    wheel = _only(dist, "*.whl")
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin/python",
        "install",
        "-q",
        wheel,
        "jupyter_server",
        env=env,
    )
    jupyter, config_dir = venv / "bin/jupyter", venv / "etc/jupyter"
    config_file = config_dir / "jupyter_server_config.d/lamplighter.json"

    def enabled_in_file() -> bool:
        value: bool = json.loads(config_file.read_text())["ServerApp"]["jpserver_extensions"]["lamplighter"]
        return value

    assert not enabled_in_file()
    assert "lamplighter disabled" in _extension_state(jupyter, env, config_dir)

    # `enable` exits 0 even when it refuses: what counts is the file it writes and what `list` reads back.
    _run(jupyter, "server", "extension", "enable", "lamplighter", env=env)
    assert enabled_in_file()
    state = _extension_state(jupyter, env, config_dir)
    assert "lamplighter enabled" in state and "lamplighter 0.1.0 OK" in state, state

    _serve_until_it_stops_itself(jupyter, env, tmp_path)

    _run(jupyter, "server", "extension", "disable", "lamplighter", env=env)
    assert not enabled_in_file()
    assert "lamplighter disabled" in _extension_state(jupyter, env, config_dir)


def _serve_until_it_stops_itself(jupyter: Path, env: dict[str, str], tmp_path: Path) -> None:
    """The enabled extension, with nothing but the config `enable` wrote: it serves its status, then stops the idle server."""
    runtime, root, log_path = tmp_path / "runtime", tmp_path / "root", tmp_path / "server.log"
    root.mkdir()
    token = "packaging-test-token"
    argv = [
        str(jupyter),
        "server",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--port=0",
        "--port-retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--Lamplighter.idle_timeout=8s",
        f"--Lamplighter.journal={tmp_path / 'journal.sqlite3'}",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            argv, env={**env, "JUPYTER_RUNTIME_DIR": str(runtime)}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        info = runtime / f"jpserver-{server.pid}.json"
        url = wait_until(
            lambda: json.loads(info.read_text())["url"],
            timeout_s=30,
            what="the server's runtime file",
            ignore=(OSError, ValueError, KeyError),
        )
        status = wait_until(
            lambda: httpx.get(
                f"{url}lamplighter/api/status", headers={"Authorization": f"token {token}"}, timeout=5
            ),
            timeout_s=15,
            what="lamplighter's status endpoint",
            ignore=(httpx.TransportError,),
        )
        assert status.status_code == 200, status.text
        assert status.json()["stopper"] == "in-server shutdown"
        server.wait(40)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    logged = log_path.read_text(errors="replace")
    assert "lamplighter: stopping the server: idle for" in logged, logged[-3000:]
