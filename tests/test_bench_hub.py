"""bench/bench_hub.py's scale part runs end to end at its smallest size (``--part scale --quick``).

A real hub with 20 stand-in servers (bench/hub_standins.py), lamplighter's pass and the culler's
over it. Its figures are not asserted (they move with the machine's load): only that every server
was set up, listed, probed and decided, and that nothing was stopped (each was used within the hour).
The side-by-side part starts real servers (minutes on a loaded machine) and is run by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_hub.py"


@pytest.mark.timeout(600)
def test_the_hub_benchmark_runs_at_its_smallest_size() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--part", "scale", "--quick"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "20 servers ready" in out, out
    [row] = [r for r in (line.split() for line in out.splitlines()) if r[:1] == ["20"] and r[2:3] == ["s"]]
    server_calls = int(row[6])
    assert server_calls >= 4 * 20, row  # every server probed: status, kernels, terminals, sessions
    assert "only" not in out and "stops journaled" not in out, out
