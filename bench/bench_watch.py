"""Benchmark of ``lamplighter watch``: stop overshoot, probes per idle wait and hour, RSS and CPU per idle hour.

Prints each figure beside its anchor, measured or read in the same run:
  - overshoot: the AWS lifecycle script polls every 120 s, jupyterhub-idle-culler every cull_every
    (300 s default), jupyter_server's culler every 300 s, Kubeflow every 60 s: their worst-case
    overshoot past the deadline is one interval;
  - probes per idle hour: one per interval for each of them (30 / 12 / 12 / 60);
  - CPU per idle hour: the AWS sample's cron job starts a Python process every 2 minutes; we run the
    equivalent one-shot check (interpreter + HTTP client + two API GETs) here and multiply by 30.

Usage: .venv/bin/python bench/bench_watch.py [--runs 10] [--hold 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lamplighter.agent import Agent
from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.settings import load_settings
from lamplighter.wiring import open_target

ANCHOR_INTERVALS_S = {
    "AWS LCC cron": 120,
    "jupyterhub-idle-culler": 300,
    "jupyter_server culler": 300,
    "Kubeflow": 60,
}


async def one_stop(server: LocalServer, journal_path: Path, idle_s: float) -> tuple[float, float, int]:
    """Watch a fresh idle server until it is stopped; (decision − stop_at, stopped − stop_at, probes)."""
    settings = load_settings(
        {
            "url": server.url,
            "token": server.token,
            "idle_timeout": f"{idle_s}s",
            "journal": str(journal_path),
        },
        env={},
    )
    async with open_target(settings) as target:
        with Journal(journal_path) as journal:
            agent = Agent(settings, target.probe, target.stopper, journal)
            result = await agent.run()
            assert result.stopped, result
            action = journal.events(kind="action")[-1]
    assert result.decision.stop_at is not None
    decided = (result.decision.next_check_at - result.decision.stop_at).total_seconds()
    return decided, float(action.detail["overshoot_s"]), agent.probes


def measure_overshoot(workdir: Path, runs: int, idle_s: float) -> tuple[list[float], list[float], list[int]]:
    decided, stopped, probes = [], [], []
    for i in range(runs):
        server = start_local_server(workdir / f"s{i}")
        try:
            d, s, p = asyncio.run(one_stop(server, workdir / f"j{i}.sqlite3", idle_s))
        finally:
            server.stop()
        decided.append(d)
        stopped.append(s)
        probes.append(p)
        print(
            f"  run {i + 1:2d}: decided {d * 1000:6.1f} ms, stopped {s * 1000:6.1f} ms after stop_at, {p} probes"
        )
    return decided, stopped, probes


PLAIN_VENV = Path(__file__).resolve().parent / ".venv-plain"


def plain_python() -> str:
    """A venv with only ``pip install .`` in it: what a user's agent runs with, without the test tools.

    (The test venv has click installed, which makes ``import httpx`` also load its CLI and rich.)
    """
    python = PLAIN_VENV / "bin" / "python"
    if not python.exists():
        print("  (creating bench/.venv-plain with a plain install, once)")
        subprocess.run([sys.executable, "-m", "venv", str(PLAIN_VENV)], check=True)
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--upgrade", str(root)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return str(python)


def measure_agent_cost(workdir: Path, hold_s: float, python: str) -> tuple[float, float, float]:
    """RSS (MB), start-up CPU (s) and CPU per idle hour (s) of a real ``lamplighter watch`` process."""
    server = start_local_server(workdir / "cost")
    try:
        agent = subprocess.Popen(
            [
                python,
                "-m",
                "lamplighter",
                "watch",
                "--url",
                server.url,
                "--idle-timeout",
                "1h",
                "--journal",
                str(workdir / "cost.sqlite3"),
                "--log-level",
                "warning",
            ],
            env={"LAMPLIGHTER_TOKEN": server.token, "PATH": "/usr/bin:/bin"},
        )
        proc = psutil.Process(agent.pid)
        time.sleep(3.0)  # imports and the first probe are done well within this
        cpu_start = sum(proc.cpu_times()[:2])
        t_start = time.monotonic()
        time.sleep(hold_s)
        cpu_end = sum(proc.cpu_times()[:2])
        elapsed = time.monotonic() - t_start
        rss_mb = proc.memory_info().rss / 1e6
        agent.terminate()
        agent.wait(10)
    finally:
        server.stop()
    return rss_mb, cpu_start, (cpu_end - cpu_start) / elapsed * 3600


def measure_cron_anchor(workdir: Path, repeats: int = 5) -> float:
    """CPU seconds of one cron-style check (new interpreter + HTTP client + two GETs), as the AWS sample runs."""
    server = start_local_server(workdir / "cron")
    code = (
        "import httpx,sys; h={'Authorization':'token '+sys.argv[2]}; "
        "httpx.get(sys.argv[1]+'api/sessions',headers=h); httpx.get(sys.argv[1]+'api/terminals',headers=h)"
    )
    costs = []
    try:
        for _ in range(repeats):
            before = psutil.Process().cpu_times()
            subprocess.run([sys.executable, "-c", code, server.url, server.token], check=True)
            after = psutil.Process().cpu_times()
            costs.append(
                (after.children_user - before.children_user)
                + (after.children_system - before.children_system)
            )
    finally:
        server.stop()
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="stop runs for the overshoot figure [10]")
    parser.add_argument("--idle", type=float, default=2.0, help="idle timeout of each run, seconds [2]")
    parser.add_argument(
        "--hold", type=float, default=30.0, help="seconds of idle watching for the CPU figure [30]"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lamplighter-bench-") as tmp:
        workdir = Path(tmp)
        print(f"stop overshoot over {args.runs} runs (idle timeout {args.idle:g} s):")
        decided, stopped, probes = measure_overshoot(workdir, args.runs, args.idle)
        rss, startup_cpu, cpu_hour = measure_agent_cost(workdir, args.hold, plain_python())
        cron_cpu = measure_cron_anchor(workdir)
    worst = max(stopped)
    print()
    print(f"{'figure':44} {'lamplighter':>14} {'anchor':>30}")
    for name, interval in ANCHOR_INTERVALS_S.items():
        print(
            f"{'worst stop overshoot vs ' + name:44} {worst * 1000:11.0f} ms {interval:>24} s  "
            f"(×{interval / worst:,.0f} better)"
        )
    print(f"{'median decision after stop_at':44} {statistics.median(decided) * 1000:11.1f} ms")
    print(f"{'median server gone after stop_at':44} {statistics.median(stopped) * 1000:11.0f} ms")
    # The agent probes at the deadline and at least every probe_interval before it, so that a kernel
    # that comes and goes in between is seen: the hourly figure follows from the 1 h default.
    hour = load_settings({"idle_timeout": "1h"}, env={})
    per_hour = 3600 / hour.effective_probe_interval.total_seconds()
    print(f"{'median probes per idle wait of ' + f'{args.idle:g} s':44} {statistics.median(probes):14.0f}")
    print(
        f"{'probes per idle hour (1 h timeout)':44} {per_hour:14.0f} {'30/h AWS, 12/h culler, 60/h Kubeflow':>30}"
    )
    print(f"{'agent RSS':44} {rss:11.1f} MB {'target ≤ 35 MB':>30}")
    print(f"{'agent start-up CPU':44} {startup_cpu:12.2f} s")
    print(
        f"{'agent CPU per idle hour':44} {cpu_hour:12.3f} s {f'cron anchor {cron_cpu * 30:.1f} s/h':>30}  "
        f"(×{cron_cpu * 30 / max(cpu_hour, 1e-3):,.0f} less)"
    )


if __name__ == "__main__":
    main()
