"""The watch path stays light: building the CLI must not import the runners' or AWS's libraries.

``lamplighter watch`` runs for weeks next to every app; its memory target (≤ 35 MB RSS, see
bench/bench_watch.py) depends on not loading websockets, rich, nbformat, yaml or boto3 it never uses.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

# click and pygments: httpx's own CLI imports them (and rich) whenever click is installed.
HEAVY = (
    "websockets", "rich", "nbformat", "yaml", "boto3", "botocore", "watchfiles", "jupyter_server",
    "click", "pygments", "argcomplete",
)  # fmt: skip

# VmRSS, not ru_maxrss: Linux keeps the high-water mark of the forked test process across exec.
_WATCH_IMPORTS = (
    "import sys, json, pathlib; import lamplighter.cli, lamplighter.agent, lamplighter.wiring; "
    "lamplighter.cli.build_parser(); "
    "rss = [l.split()[1] for l in pathlib.Path('/proc/self/status').read_text().splitlines() "
    "if l.startswith('VmRSS:')]; "
    f"print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], int(rss[0])]))"
)


def test_cli_and_agent_import_no_heavy_library() -> None:
    # Not hidden: click is installed here (papermill brings it), as in many Jupyter images.
    assert importlib.util.find_spec("click") is not None
    out = subprocess.run(
        [sys.executable, "-c", _WATCH_IMPORTS], capture_output=True, text=True, check=True
    ).stdout
    loaded, rss_kib = json.loads(out)
    assert loaded == []
    assert rss_kib < 35 * 1024  # what is imported leaves room for the agent's own work


def test_httpx_still_imports_its_cli_when_asked() -> None:
    # The guard hides httpx._main for lamplighter's own import only.
    code = "import lamplighter.cli, httpx._main, sys; print('click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
