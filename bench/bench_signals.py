"""Benchmark of the process signal: what one sample of a process tree costs, at 50 and 500 processes.

For each tree size it starts that many ``sleep`` processes under one ``bash`` parent, then times
``ProcessSignal.sample()`` (wall ms and CPU ms of this process per sample) for:

  - the procfs sampler (Linux default: one ``/proc/<pid>/stat`` read per process on the host);
  - the psutil sampler (the default elsewhere);
  - procfs with ``scope="user"`` (every process of the user, not only the tree);

beside the naive anchor, the way jupyter-resource-usage reads a tree: ``psutil.Process(root)
.children(recursive=True)`` and ``cpu_times()`` of each, with fresh objects every time. The share of a
core that sampling costs at the default 5 s interval is printed too. Every process it starts is killed
at the end.

Usage: .venv/bin/python bench/bench_signals.py [--sizes 50 500] [--samples 20]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable

import psutil

from lamplighter.signals.processes import ProcessSignal, ProcessSignalOptions

MAX_TREE = 1000
DEFAULT_INTERVAL_S = ProcessSignalOptions().sample_interval_s


def start_tree(size: int) -> subprocess.Popen[bytes]:
    """``size`` sleepers under one bash parent, in a session of their own (killed as a group)."""
    parent = subprocess.Popen(
        ["bash", "-c", f"for i in $(seq {size}); do sleep 600 & done; wait"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(psutil.Process(parent.pid).children()) < size:
        if time.monotonic() > deadline:
            stop_tree(parent)
            raise RuntimeError(
                f"only {len(psutil.Process(parent.pid).children())} of {size} sleepers started"
            )
        time.sleep(0.05)
    return parent


def stop_tree(parent: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(parent.pid, signal.SIGKILL)
    parent.wait(30)


def naive_sample(root: int) -> float:
    total = 0.0
    for child in psutil.Process(root).children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def measure(sample: Callable[[], object], samples: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call of ``sample``, after two warm-up calls."""
    sample()
    sample()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(samples):
        sample()
    return (time.perf_counter() - wall) * 1000 / samples, (time.process_time() - cpu) * 1000 / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    print(f"host: {len(psutil.pids())} processes before the trees, {psutil.cpu_count()} CPUs")
    print(f"{'tree':>5}  {'sampler':<28} {'wall ms':>8} {'CPU ms':>8} {'core share at 5 s':>18}")
    for size in args.sizes:
        if not 0 < size <= MAX_TREE:
            raise SystemExit(f"--sizes: 1..{MAX_TREE}")
        parent = start_tree(size)
        try:
            variants: list[tuple[str, Callable[[], object]]] = [
                ("procfs (Linux default)", ProcessSignal(parent.pid, use_procfs=True).sample),
                ("psutil (elsewhere)", ProcessSignal(parent.pid, use_procfs=False).sample),
                (
                    "procfs + user processes",
                    ProcessSignal(parent.pid, ProcessSignalOptions(scope="user"), use_procfs=True).sample,
                ),
                ("anchor: naive psutil tree", functools.partial(naive_sample, parent.pid)),
            ]
            for label, sample in variants:
                wall_ms, cpu_ms = measure(sample, args.samples)
                share = cpu_ms / (DEFAULT_INTERVAL_S * 1000)
                print(f"{size:>5}  {label:<28} {wall_ms:>8.2f} {cpu_ms:>8.2f} {share:>17.3%}")
            print(f"       (host now has {len(psutil.pids())} processes)")
        finally:
            stop_tree(parent)


if __name__ == "__main__":
    main()
