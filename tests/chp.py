"""A real configurable-http-proxy (JupyterHub's proxy, from npm) in front of test servers.

``make test`` installs the package under ``.venv/node`` (once, behind a stamp). ``tests/data/chp.js``
runs the package's own ``ConfigurableProxy`` on ports the kernel picks and writes one line per request
it receives, so a test can count what the agent sent through the proxy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.waiting import wait_until

__all__ = ["Proxy", "running_proxy"]

_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(
    os.environ.get("LAMPLIGHTER_TEST_CHP", _ROOT / ".venv/node/node_modules/configurable-http-proxy")
)
_LAUNCHER = Path(__file__).with_name("data") / "chp.js"


@dataclass
class Proxy:
    """A running proxy: ``url`` serves the routes, ``api`` is its REST API (``/api/routes``)."""

    url: str
    api: str
    token: str
    log: Path  # the launcher's record: its ports, then one line per request received
    process: subprocess.Popen[bytes]

    def add_route(self, prefix: str, target: str) -> None:
        """``POST /api/routes{prefix}`` as JupyterHub does when a user's server starts."""
        answer = httpx.post(
            f"{self.api}/api/routes{prefix}",
            json={"target": target},
            headers={"Authorization": f"token {self.token}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text

    def requests(self) -> list[dict[str, Any]]:
        """Every request the proxy has received so far, oldest first (the launcher's log after its first line)."""
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines[1:] if line.strip()]


@contextmanager
def running_proxy(workdir: Path) -> Iterator[Proxy]:
    node = shutil.which("node")
    if node is None or not (PACKAGE / "lib" / "configproxy.js").exists():
        pytest.fail(
            f"configurable-http-proxy is not installed at {PACKAGE}; run `make test` (it runs npm install)"
        )
    token = secrets.token_hex(16)
    log = workdir / "chp-requests.jsonl"
    with (workdir / "chp.log").open("wb") as out:
        process = subprocess.Popen(
            [node, str(_LAUNCHER), str(PACKAGE), str(log)],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def ports() -> dict[str, int] | None:
            assert process.poll() is None, (workdir / "chp.log").read_text()
            first = log.read_text().partition("\n") if log.exists() else ("", "", "")
            return json.loads(first[0]) if first[1] else None

        found = wait_until(ports, timeout_s=20, what="the proxy to listen")
        yield Proxy(
            url=f"http://127.0.0.1:{found['proxy']}",
            api=f"http://127.0.0.1:{found['api']}",
            token=token,
            log=log,
            process=process,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
