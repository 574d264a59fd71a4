"""A real Jupyter server whose extra kernelspecs run ipykernel under other languages' names, so the
parameter translator chosen for R or Julia is tested without installing either; and the check that a
``run notebook`` left no kernel or session behind on it."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from lamplighter.localserver import LocalServer, start_local_server


def start_server_with_languages(workdir: Path, specs: Mapping[str, str]) -> LocalServer:
    """``start_local_server`` with one kernelspec per ``{name: language}``, each running ipykernel."""
    for name, language in specs.items():
        spec_dir = workdir / "data" / "kernels" / name
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"ipykernel as {language}",
            "language": language,
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return start_local_server(workdir)


def assert_nothing_left(server: LocalServer) -> None:
    headers = {"Authorization": f"token {server.token}"}
    for what in ("kernels", "sessions"):
        assert httpx.get(f"{server.url}api/{what}", headers=headers).json() == [], what
