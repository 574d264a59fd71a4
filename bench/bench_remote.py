"""Remote execution figures: lamplighter's runners against their anchors, in one run (prints, asserts nothing).

Notebook, 200 trivial cells (``x = i``):
  - lamplighter ``NotebookRunner`` on a local Jupyter server (pipelined, with ``pipeline=False``, and
    with ``history="file"``: the kernel's history thread writing every cell to history.sqlite, which
    nbclient's kernels never do)
  - nbclient in this process with a local kernel: per cell, and its whole ``execute()`` plus the save
    (the anchors; targets: lamplighter's median ≤ 1.0× on both)
  - a naive kernel-websocket client (no TCP_QUICKACK, one request at a time)
  - papermill CLI and ``lamplighter run notebook`` CLI, wall time of the whole command
  - the CPU each process (Jupyter server, kernel, this client) spends per cell: the server hop is the
    one cost nbclient does not pay, which a busy 2-core machine cannot overlap with the kernel's work
Every figure is a median with its range over ``--repeat`` (≥ 5) interleaved runs: a best run hides
the spread that a scheduled job actually sees.
Shell, ``echo hi`` round trips:
  - ``TerminalSession.run`` reusing one terminal (target: ≤ 5 ms on loopback)
  - ``run_shell(terminal=NAME)`` (a websocket per call, as the CLI does)
  - a naive terminal client (plain websockets, no TCP_QUICKACK), the anchor

Run: ``.venv/bin/python bench/bench_remote.py [--cells 200] [--commands 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from websockets.asyncio.client import connect

from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.remote import (
    Connection,
    LocalNotebookStore,
    NotebookRunner,
    RunObserver,
    TerminalSession,
    run_shell,
)
from lamplighter.remote.kernels import shutdown_kernel, start_kernel

PYTHON = {"name": "python3", "display_name": "Python 3", "language": "python"}


def make_notebook(cells: int) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": PYTHON})
    nb.cells = [nbformat.v4.new_code_cell(f"x = {i}") for i in range(cells)]
    plain: dict[str, Any] = json.loads(json.dumps(nb))  # sources stay strings, as the contents API gives them
    return plain


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


class _CpuMeter:
    """CPU seconds used by each process of a run (``{"kernel": pid, ...}``; "client" is this one)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.start = self._sample()
        self.used: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_s(pid) for name, pid in self.pids.items()}
        sample["client"] = time.process_time()
        return sample

    def stop(self) -> None:
        end = self._sample()
        self.used = {name: end[name] - self.start[name] for name in end}


class _CellClock(RunObserver):
    """Times the cells only: from the first cell sent to the last one finished (kernel start excluded),
    and the CPU each process (server, kernel, this client) used meanwhile."""

    def __init__(self, server_pid: int) -> None:
        self.first = self.last = 0.0
        self.server_pid = server_pid
        self.meter: _CpuMeter | None = None

    def notebook_started(self, nb: Mapping[str, Any], cell_indices: Sequence[int]) -> None:
        kernels = child_pids(self.server_pid)
        pids = {"server": self.server_pid}
        if len(kernels) == 1:
            pids["kernel"] = kernels[0]
        self.meter = _CpuMeter(pids)
        self.first = time.perf_counter()

    def cell_finished(self, index: int, cell: Mapping[str, Any], result: Any) -> None:
        self.last = time.perf_counter()
        if self.meter is not None:
            self.meter.stop()


Run = tuple[float, float, dict[str, float]]
"""(per-cell ms, whole s, CPU ms per cell by process) of one run."""


def _per_cell_ms(used: Mapping[str, float], cells: int) -> dict[str, float]:
    return {name: seconds / cells * 1000 for name, seconds in used.items()}


async def lamplighter_notebook(
    server: LocalServer, cells: int, *, pipeline: bool, save_to: Path | None = None, history: str = "memory"
) -> Run:
    """Figures for NotebookRunner; whole = kernel start to the saved notebook."""
    nb = make_notebook(cells)
    clock = _CellClock(server.process.pid)
    began = time.perf_counter()
    async with Connection(server.url, token=server.token) as conn:
        store = LocalNotebookStore(save_to) if save_to is not None else None
        runner = NotebookRunner(conn, pipeline=pipeline, observer=clock, store=store, history=history)
        await runner.run(nb)
    total = time.perf_counter() - began
    used = clock.meter.used if clock.meter is not None else {}
    return (clock.last - clock.first) / cells * 1000, total, _per_cell_ms(used, cells)


async def nbclient_notebook(cells: int, workdir: Path) -> Run:
    """Figures for nbclient with a local kernel, in this process.

    Per cell: its own cell loop, kernel start excluded. Whole: what ``execute()`` does (start the
    kernel, run every cell, shut down) plus writing the notebook, as a job would.
    """
    nb = nbformat.from_dict(make_notebook(cells))  # type: ignore[no-untyped-call]
    client = NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    first = last = 0.0
    original = client.async_execute_cell
    meter: _CpuMeter | None = None

    async def timed(cell: Any, index: int, **kwargs: Any) -> Any:
        nonlocal first, last, meter
        if index == 0:
            process = getattr(getattr(client.km, "provisioner", None), "process", None)
            meter = _CpuMeter({"kernel": process.pid} if process is not None else {})
            first = time.perf_counter()
        result = await original(cell, index, **kwargs)
        last = time.perf_counter()
        if meter is not None:
            meter.stop()
        return result

    client.async_execute_cell = timed  # type: ignore[method-assign,assignment]
    began = time.perf_counter()
    await client.async_execute()
    nbformat.write(nb, workdir / "nbclient-out.ipynb")  # type: ignore[no-untyped-call]
    used = meter.used if meter is not None else {}
    return (last - first) / cells * 1000, time.perf_counter() - began, _per_cell_ms(used, cells)


async def naive_kernel_client(server: LocalServer, cells: int) -> float:
    """Per-cell ms for a minimal websocket client: legacy JSON, no QUICKACK, reply + idle per request."""
    async with Connection(server.url, token=server.token) as conn:
        kernel_id = await start_kernel(conn, "python3")
        try:
            session = uuid.uuid4().hex
            url = conn.ws_url(f"api/kernels/{kernel_id}/channels", {"session_id": session})
            async with connect(url, additional_headers=conn.ws_headers(), max_size=None) as ws:
                first = time.perf_counter()
                for i in range(cells):
                    msg_id = uuid.uuid4().hex
                    header = {"msg_id": msg_id, "session": session, "username": "naive", "msg_type": "execute_request", "version": "5.3", "date": ""}  # fmt: skip
                    content = {"code": f"x = {i}", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}  # fmt: skip
                    msg = {
                        "channel": "shell",
                        "header": header,
                        "parent_header": {},
                        "metadata": {},
                        "content": content,
                    }
                    await ws.send(json.dumps(msg))
                    replied = idle = False
                    while not (replied and idle):
                        answer = json.loads(await ws.recv())
                        if answer.get("parent_header", {}).get("msg_id") != msg_id:
                            continue
                        replied = replied or answer["msg_type"] == "execute_reply"
                        idle = idle or (
                            answer["msg_type"] == "status" and answer["content"]["execution_state"] == "idle"
                        )
                return (time.perf_counter() - first) / cells * 1000
        finally:
            await shutdown_kernel(conn, kernel_id)


def cli_wall(argv: list[str], env: Mapping[str, str] | None = None) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=dict(env) if env is not None else None)
    return time.perf_counter() - began


async def shell_reused(server: LocalServer, commands: int) -> list[float]:
    async with Connection(server.url, token=server.token) as conn, TerminalSession(conn) as term:
        await term.run("true")
        times = []
        for _ in range(commands):
            began = time.perf_counter()
            result = await term.run("echo hi")
            times.append((time.perf_counter() - began) * 1000)
            assert result.output == "hi\n"
        return times


async def shell_run_shell(server: LocalServer, commands: int) -> list[float]:
    async with Connection(server.url, token=server.token) as conn:
        try:
            await run_shell(conn, "true", terminal="bench")
            times = []
            for _ in range(commands):
                began = time.perf_counter()
                await run_shell(conn, "echo hi", terminal="bench")
                times.append((time.perf_counter() - began) * 1000)
            return times
        finally:
            await conn.request("DELETE", "api/terminals/bench")


async def shell_naive(server: LocalServer, commands: int) -> list[float]:
    """The anchor, as the AWS sample and a first attempt write it: plain websockets, echo left on, a
    split marker to find the end, no QUICKACK."""
    async with Connection(server.url, token=server.token) as conn:
        name = (await conn.request("POST", "api/terminals", json_body={}))["name"]
        try:
            url = conn.ws_url(f"terminals/websocket/{name}")
            async with connect(url, additional_headers=conn.ws_headers()) as ws:
                times = []
                for _ in range(commands + 1):
                    nonce = secrets.token_hex(4)
                    began = time.perf_counter()
                    await ws.send(json.dumps(["stdin", f" echo hi; printf '%s%s\\n' __END_ {nonce}\r"]))
                    seen = ""
                    while f"__END_{nonce}" not in seen:
                        message = json.loads(await ws.recv())
                        if message[0] == "stdout":
                            seen += message[1]
                    times.append((time.perf_counter() - began) * 1000)
                return times[1:]
        finally:
            await conn.request("DELETE", f"api/terminals/{name}")


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9)]
    mean = statistics.mean(ordered)
    return f"median {statistics.median(ordered):6.2f} ms  mean {mean:6.2f} ms  p90 {p90:6.2f} ms"


def spread(values: Sequence[float], unit: str, digits: int = 2) -> str:
    """The median and the range of ``values``: ``4.30 ms [3.90-6.10]``."""
    med = statistics.median(values)
    return f"{med:.{digits}f} {unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


async def main_async(args: argparse.Namespace, server: LocalServer, workdir: Path) -> None:
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other work skews figures)"
    )
    if args.part in ("all", "notebook"):
        await notebook_figures(args, server, workdir)
    if args.part in ("all", "shell"):
        await shell_figures(args, server)


async def notebook_figures(args: argparse.Namespace, server: LocalServer, workdir: Path) -> None:
    print(f"\nnotebook, {args.cells} trivial cells; median [min-max] over {args.repeat} interleaved runs")
    print("  per cell: the cell loop only; whole: kernel start to the saved notebook")
    await lamplighter_notebook(server, 10, pipeline=True)  # warm-up: imports, first kernel
    await nbclient_notebook(10, workdir)
    source = workdir / "bench.ipynb"
    source.write_text(json.dumps(make_notebook(args.cells)))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "LAMPLIGHTER_TOKEN": server.token}
    papermill_argv = [
        str(bin_dir / "papermill"),
        "--no-progress-bar",
        str(source),
        str(workdir / "pm-out.ipynb"),
    ]
    ours_argv = [str(bin_dir / "lamplighter"), "run", "notebook", "--upload", str(source), str(workdir / "ll-out.ipynb"), "--url", server.url]  # fmt: skip
    runs: dict[str, list[Run]] = {"pipelined": [], "sequential": [], "history-file": [], "nbclient": []}
    walls: dict[str, list[float]] = {"papermill": [], "ours": []}
    saved = workdir / "ll-runner-out.ipynb"
    for _ in range(args.repeat):
        runs["pipelined"].append(await lamplighter_notebook(server, args.cells, pipeline=True, save_to=saved))
        runs["nbclient"].append(await nbclient_notebook(args.cells, workdir))
        runs["sequential"].append(
            await lamplighter_notebook(server, args.cells, pipeline=False, save_to=saved)
        )
        runs["history-file"].append(
            await lamplighter_notebook(server, args.cells, pipeline=True, save_to=saved, history="file")
        )
        if args.cli:
            walls["papermill"].append(cli_wall(papermill_argv))
            walls["ours"].append(cli_wall(ours_argv, env))
    cell = {name: [c for c, _, _ in figures] for name, figures in runs.items()}
    whole = {name: [t for _, t, _ in figures] for name, figures in runs.items()}
    med_cell = {name: statistics.median(v) for name, v in cell.items()}
    med_whole = {name: statistics.median(v) for name, v in whole.items()}
    naive_cell = await naive_kernel_client(server, args.cells)
    print(f"  {'':34}{'per cell':>24}  {'whole':>22}")
    for name, label in (
        ("nbclient", "nbclient, local kernel (anchor)"),
        ("pipelined", "lamplighter, pipelined"),
        ("sequential", "lamplighter, one cell at a time"),
        ("history-file", "lamplighter, --history file"),
    ):
        ratio = (
            ""
            if name == "nbclient"
            else f"  {med_cell[name] / med_cell['nbclient']:.2f}x / {med_whole[name] / med_whole['nbclient']:.2f}x nbclient"
        )
        print(f"  {label:34}{spread(cell[name], 'ms'):>24}  {spread(whole[name], 's'):>22}{ratio}")
    print(f"  {'naive websocket client':34}{naive_cell:>21.2f} ms  {'':22}  {naive_cell / med_cell['nbclient']:.2f}x nbclient")  # fmt: skip
    print("  targets: pipelined per cell <= 1.0x nbclient's median; whole <= 1.0x nbclient's execute()")
    print(
        "  CPU per cell during the cell loop, median ms (where the 2 cores go; the server hop is ours only):"
    )
    for name in ("nbclient", "pipelined", "sequential", "history-file"):
        used = [figures[2] for figures in runs[name]]
        parts = {
            part: statistics.median(u.get(part, 0.0) for u in used) for part in ("server", "kernel", "client")
        }
        shown = "  ".join(f"{part} {ms:5.2f}" for part, ms in parts.items() if any(part in u for u in used))
        print(f"    {name:12} {shown}  total {sum(parts.values()):5.2f}")
    if args.cli:
        pm, ours = statistics.median(walls["papermill"]), statistics.median(walls["ours"])
        print(f"  {'papermill CLI (local kernel)':34}{'':24}  {spread(walls['papermill'], 's'):>22}")
        print(f"  {'lamplighter run notebook CLI':34}{'':24}  {spread(walls['ours'], 's'):>22}  {ours / pm:.2f}x papermill")  # fmt: skip


async def shell_figures(args: argparse.Namespace, server: LocalServer) -> None:
    print(f"\nshell, `echo hi` round trip, {args.commands} commands")
    reused = await shell_reused(server, args.commands)
    per_call = await shell_run_shell(server, max(20, args.commands // 4))
    naive = await shell_naive(server, args.commands)
    print(f"  naive terminal client (anchor)    {summary(naive)}")
    print(
        f"  TerminalSession.run, one terminal {summary(reused)}   "
        f"{statistics.mean(naive) / statistics.mean(reused):.1f}x faster by mean (target: median <= 5 ms)"
    )
    print(f"  run_shell(terminal=NAME), per call {summary(per_call)}   (new websocket + setup each call)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved notebook runs per variant")
    parser.add_argument(
        "--no-cli", dest="cli", action="store_false", help="skip the papermill / lamplighter CLI walls"
    )
    parser.add_argument("--part", choices=("all", "notebook", "shell"), default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        workdir = Path(tmp)
        server = start_local_server(workdir / "server")
        try:
            asyncio.run(main_async(args, server, workdir))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
