"""bench/bench_hub.py runs end to end at its smallest size (``--quick``) and prints every figure.

Its figures are not asserted (they move with the machine's load): only that both parts ran against a
real hub, and the one promise that holds at any load: lamplighter stopped no busy server.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_hub.py"


def test_the_hub_benchmark_runs_at_its_smallest_size() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--servers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    busy = next(line for line in out.splitlines() if "busy servers wrongly stopped" in line)
    assert busy.split()[4:7] == ["0", "of", "1"], busy  # lamplighter's column
    for figure in ("server gone, after the deadline", "hub API requests per hour", "service CPU per hour"):
        assert figure in out, out
    scale = out.split("scale:", 1)[1]
    assert "20 servers ready" in scale, scale
    row = next(line.split() for line in scale.splitlines() if line.split()[:1] == ["20"])
    assert row[0] == "20", row
