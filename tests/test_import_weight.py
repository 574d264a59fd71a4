"""The watch path stays light: building the CLI must not import the runners' or AWS's libraries.

``lamplighter watch`` runs for weeks next to every app; its memory target (≤ 35 MB RSS, see
bench/bench_watch.py) depends on not loading websockets, rich, nbformat, yaml or boto3 it never uses.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("websockets", "rich", "nbformat", "yaml", "boto3", "botocore", "watchfiles", "jupyter_server")


def test_cli_and_agent_import_no_heavy_library() -> None:
    # httpx imports its own CLI, and with it rich, whenever click is installed; click is no dependency
    # of lamplighter (papermill brings it into the test environment), so it is hidden here.
    code = (
        "import sys, json; sys.modules['click'] = None; import lamplighter.cli, lamplighter.agent, lamplighter.wiring; "
        "lamplighter.cli.build_parser(); "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
