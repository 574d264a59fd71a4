"""A throwaway Jupyter server on a free loopback port, for the demo, the tests and the benchmarks.

It needs the ``demo`` extra (jupyter_server, jupyter_server_terminals, ipykernel) in the same
environment. The server gets its own config, data and runtime folders, so nothing from the user's
Jupyter setup leaks in, and it binds 127.0.0.1 only.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lamplighter.errors import ConfigError, RemoteTimeout

__all__ = ["LocalServer", "free_port", "start_local_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalServer:
    """A running local Jupyter server; ``url`` includes the base path and ends in ``/``."""

    url: str
    token: str
    root_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it; a no-op if it already exited."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)

    def wait_exited(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the server to exit by itself; its return code, or None."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None


def start_local_server(
    workdir: Path,
    *,
    base_url: str = "/",
    token: str | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 30.0,
) -> LocalServer:
    """Start ``jupyter server`` with its files under ``workdir`` and wait until its API answers."""
    try:
        import jupyter_server  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the local Jupyter server needs the demo extra: pip install 'lamplighter[demo]'"
        ) from None
    token = token or secrets.token_hex(16)
    port = port or free_port()
    root = workdir / "root"
    for sub in ("root", "config", "data", "runtime"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(workdir / "config"),
        JUPYTER_DATA_DIR=str(workdir / "data"),
        JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        SHELL="/bin/bash",
        PYTHONUNBUFFERED="1",
    )
    env.pop("JUPYTER_TOKEN", None)
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--ServerApp.base_url={base}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        *extra_args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}{base}"
    server = LocalServer(url=url, token=token, root_dir=root, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + startup_timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RemoteTimeout(
                    f"the local Jupyter server exited with status {process.returncode}:\n{tail}"
                )
            try:
                answer = client.get(url + "api/status", headers={"Authorization": f"token {token}"})
                if answer.status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    server.stop()
    raise RemoteTimeout(f"the local Jupyter server did not answer within {startup_timeout_s:.0f} s")
