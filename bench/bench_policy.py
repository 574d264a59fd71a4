"""Policy replay: a month of 100 synthetic apps through the AWS lifecycle script, jupyterhub-idle-culler
and lamplighter's own ``decide``, with the same idle timeout (``lamplighter.views.replay``).

The anchors are the other two policies, replayed in the same run on the same trace. The trace is
seeded (``lamplighter.views.synthetic``: its assumptions are in that module's docstring), so the
figures are exact counts, not timings: a second run with the same seed prints the same table. The
wall time of the replay is printed too, with the spread over ``--runs``.

Targets (issue 15): lamplighter kills 0 running jobs where the other two kill some; its idle
app-hours past the timeout are at most 1 % of theirs.

Usage: .venv/bin/python bench/bench_policy.py [--apps 100] [--days 30] [--seed 1] [--timeout 1h]
       [--workers 2] [--trace-out trace.jsonl] [--runs 1] [--prices deploy/prices-sagemaker.toml]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from lamplighter.settings import parse_duration
from lamplighter.views.replay import format_table, replay, write_trace
from lamplighter.views.report import load_prices
from lamplighter.views.synthetic import generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", default="1h")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--trace-out", type=Path)
    parser.add_argument(
        "--prices", type=Path, default=Path(__file__).parent.parent / "deploy" / "prices-sagemaker.toml"
    )
    args = parser.parse_args()
    trace = generate(apps=args.apps, days=args.days, seed=args.seed)
    if args.trace_out:
        write_trace(trace, args.trace_out)
    timeout = parse_duration(args.timeout)
    prices = load_prices(args.prices)
    walls = []
    for _ in range(max(1, args.runs)):
        started = time.perf_counter()
        results = replay(trace, timeout, seed=args.seed, workers=args.workers, per_hour=prices.per_hour)
        walls.append(time.perf_counter() - started)
    print(f"trace: {args.apps} apps, {args.days} days, seed {args.seed}; timeout {args.timeout}")
    print(format_table(results, currency=prices.currency))
    ours = next(r for r in results if r.policy == "lamplighter")
    ok = True
    for anchor in (r for r in results if r.policy != "lamplighter"):
        share = (
            ours.idle_hours_past_timeout / anchor.idle_hours_past_timeout
            if anchor.idle_hours_past_timeout
            else 0.0
        )
        print(
            f"vs {anchor.policy}: idle app-hours past the timeout {100 * share:.2f} % of theirs "
            f"(target <= 1 %); jobs killed {ours.jobs_killed} vs {anchor.jobs_killed}"
        )
        ok = ok and share <= 0.01 and ours.jobs_killed == 0 and anchor.jobs_killed > 0
    spread = f" (min {min(walls):.1f}, max {max(walls):.1f}, {len(walls)} runs)" if len(walls) > 1 else ""
    print(
        f"replay wall time: median {statistics.median(walls):.1f} s{spread}; lamplighter decisions: {ours.checks}"
    )
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
