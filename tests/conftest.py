"""Fixtures that start real Jupyter servers on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamplighter.localserver import LocalServer, start_local_server

ServerFactory = Callable[..., LocalServer]


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
