"""A throwaway Jupyter server on a free loopback port, for the demo, the tests and the benchmarks.

It needs the ``demo`` extra (jupyter_server, jupyter_server_terminals, ipykernel) in the same
environment. The server gets its own config, data and runtime folders, so nothing from the user's
Jupyter setup leaks in, and it binds 127.0.0.1 only.

The server picks its own port (``--port=0``) and we read it back from the ``jpserver-<pid>.json`` it
writes once it listens: choosing a free port here and handing it over would race with every other
process binding ports meanwhile (the tests run many servers at once).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lamplighter.errors import ConfigError, RemoteTimeout
from lamplighter.retry import Backoff, attempts_sync

__all__ = ["LocalServer", "start_local_server"]


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
        _terminate(self.process, timeout_s)

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
    tls: tuple[Path, Path] | None = None,
) -> LocalServer:
    """Start ``jupyter server`` with its files under ``workdir`` and wait until its API answers.

    Without ``port`` the server binds a port the kernel gives it, reported back through its runtime file.
    ``tls`` (certificate file, key file) serves https, as a SageMaker notebook instance's server does;
    the readiness check then trusts that certificate file only.
    """
    try:
        import jupyter_server  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the local Jupyter server needs the demo extra: pip install 'lamplighter[demo]'"
        ) from None
    # "" starts it with no token, as SageMaker Distribution does behind Studio's proxy.
    token = secrets.token_hex(16) if token is None else token
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
        f"--port={port or 0}",
        "--port-retries=0",
        f"--ServerApp.base_url={base}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        *extra_args,
    ]
    if tls is not None:
        argv += [f"--ServerApp.certfile={tls[0]}", f"--ServerApp.keyfile={tls[1]}"]
    scheme = "https" if tls is not None else "http"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    info_file = workdir / "runtime" / f"jpserver-{process.pid}.json"
    bound: int | None = None
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls[0])) if tls else True
    with httpx.Client(timeout=2.0, verify=verify) as client:
        for _attempt in attempts_sync(Backoff(0.1, 0.1), timeout_s=startup_timeout_s):
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RemoteTimeout(
                    f"the local Jupyter server exited with status {process.returncode}:\n{tail}"
                )
            bound = bound or _listening_port(info_file)
            if bound:
                url = f"{scheme}://127.0.0.1:{bound}{base}"
                try:
                    auth = {"Authorization": f"token {token}"} if token else {}
                    answer = client.get(url + "api/status", headers=auth)
                    if answer.status_code == 200:
                        return LocalServer(
                            url=url,
                            token=token,
                            root_dir=root,
                            port=bound,
                            process=process,
                            log_path=log_path,
                        )
                except httpx.TransportError:
                    pass  # the port is chosen before the server listens on it
    _terminate(process)
    raise RemoteTimeout(f"the local Jupyter server did not answer within {startup_timeout_s:.0f} s")


def _listening_port(info_file: Path) -> int | None:
    """The port the server chose, from its runtime file; None until the file is written.

    jupyter_server resolves ``--port=0`` itself: the kernel hands it a port nobody holds, and it listens
    on it moments later in the same start-up; a port chosen here would stay free for a whole Python
    start-up (about a second) for others to take.
    """
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or caught half-written
    port = info.get("port") if isinstance(info, dict) else None
    return port if isinstance(port, int) and port > 0 else None


def _terminate(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)
