"""Fixtures that start real Jupyter servers on loopback ports they pick themselves (see localserver)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.redaction import hidden_scope
from tests.hub import hub, hub_users  # noqa: F401  # one real JupyterHub per session, for tests/test_hub_*.py

ServerFactory = Callable[..., LocalServer]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``lamplighter ARGS`` in its own process, as a user or cron runs it: exit status, stdout, stderr."""
    return subprocess.run(
        [sys.executable, "-m", "lamplighter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def watch(server: LocalServer, *args: str) -> int:
    """``lamplighter watch`` against a test server, in-process, with its token."""
    from lamplighter.cli import main

    return main(["watch", "--url", server.url, "--token", server.token, *args])


@pytest.fixture(autouse=True)
def _isolated_secrets() -> Iterator[None]:
    """What one test registers as a secret (a random one from a property test) masks no later test's output."""
    with hidden_scope():
        yield


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the developer's own journal, keep-alive file and config."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("LAMPLIGHTER_KEEP_ALIVE_FILE", str(state / "keep-alive"))
    monkeypatch.setenv("LAMPLIGHTER_NOTICE_FILE", str(state / "notice.txt"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (
        "LAMPLIGHTER_CONFIG",
        "LAMPLIGHTER_TOKEN",
        "JUPYTER_TOKEN",
        "IDLE_TIME_IN_SECONDS",
        "JL_PORT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real ``jupyter server`` processes (``factory(base_url="/", extra_args=[...])``); all stopped after."""
    started: list[LocalServer] = []

    def factory(**kwargs: object) -> LocalServer:
        workdir = tmp_path / f"server{len(started)}"
        server = start_local_server(workdir, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def jupyter(server_factory: ServerFactory) -> LocalServer:
    """One real Jupyter server at base URL ``/`` with a token."""
    return server_factory()


@pytest.fixture
def cli_env(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``--url`` of the requesting module's own ``server`` fixture, for in-process ``main([...])`` runs.

    The token goes through the environment, no user config is read, and the logging handlers that
    ``main`` sets up are restored afterwards.
    """
    monkeypatch.setenv("LAMPLIGHTER_TOKEN", server.token)
    monkeypatch.delenv("LAMPLIGHTER_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(server.root_dir.parent / "xdg"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield ["--url", server.url]
    root.handlers[:] = handlers
    root.setLevel(level)
