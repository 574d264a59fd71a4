"""The process signal against real processes: busy loops, sleepers, spikes, ignored daemons, a real terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect

from lamplighter.localserver import LocalServer
from lamplighter.model import ActivityReading, Clock
from lamplighter.signals.processes import (
    DEFAULT_PROCESS_IGNORE,
    ProcessSignal,
    ProcessSignalOptions,
    describe_process,
)

UTC = timezone.utc
# Short windows keep the tests fast: busy for 1 s out of 3 s counts, samples every 0.1 s.
FAST = ProcessSignalOptions(sample_interval_s=0.1, window_s=3.0)
# Every busy loop ends by itself, so nothing outlives a failed test for long.
BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
SLEEP = "import time\ntime.sleep({seconds})\n"

# The fake "server": starts the commands in argv[1] (a JSON list of argv lists), prints their pids, then
# busy-loops or sleeps itself for a bounded time.
SERVER = """
import json, subprocess, sys, time
children = [subprocess.Popen(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps([child.pid for child in children]), flush=True)
end = time.time() + 40
if sys.argv[2] == "busy":
    while time.time() < end: pass
else:
    time.sleep(40)
"""


def now() -> datetime:
    return datetime.now(UTC)


def py(code: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", code, *extra]


@dataclass
class FakeServer:
    process: subprocess.Popen[str]
    children: list[int]
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """Start a fake server with children; its whole process group (and any extra pids) is killed after."""
    started: list[FakeServer] = []

    def start(*children: list[str], busy: bool = False) -> FakeServer:
        process = subprocess.Popen(
            py(SERVER, json.dumps(list(children)), "busy" if busy else "sleep"),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert process.stdout is not None
        server = FakeServer(process, json.loads(process.stdout.readline()))
        started.append(server)
        return server

    yield start
    for server in started:
        for pid in server.extra_pids:
            kill(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(10)
        if server.process.stdout is not None:
            server.process.stdout.close()


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def until(
    sig: ProcessSignal, predicate: Callable[[ActivityReading], bool], timeout_s: float = 10.0
) -> ActivityReading:
    """Poll the signal's reading until ``predicate`` holds; fail with the last reading after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    reading = sig.reading(now())
    while not predicate(reading):
        assert time.monotonic() < deadline, f"condition not met in {timeout_s} s; last reading: {reading}"
        await asyncio.sleep(0.05)
        reading = sig.reading(now())
    return reading


def sample_for(
    signals: list[ProcessSignal], seconds: float, *, interval_s: float = 0.1
) -> list[ActivityReading]:
    """Sample every signal every ``interval_s`` for ``seconds``; all readings taken on the way."""
    readings = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sig in signals:
            sig.sample()
            readings.append(sig.reading(now()))
        time.sleep(interval_s)
    return readings


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@pytest.mark.parametrize("use_procfs", [True, False], ids=["procfs", "psutil"])
async def test_silent_busy_job_is_work_until_killed(
    fake_server: Callable[..., FakeServer], use_procfs: bool
) -> None:
    server = fake_server(py(BUSY.format(seconds=30)), py(SLEEP.format(seconds=30)))
    busy_pid, sleeper_pid = server.children
    sig = ProcessSignal(server.pid, FAST, use_procfs=use_procfs)
    task = asyncio.create_task(sig.run())
    try:
        reading = await until(sig, lambda r: r.active_now)
        assert reading.clock is Clock.WORK and reading.source == "processes"
        assert f"pid {busy_pid} `python" in reading.detail
        assert "CPU over the last" in reading.detail
        assert busy_pid in sig.tree_pids() and sleeper_pid in sig.tree_pids()
        assert server.pid not in sig.tree_pids()

        kill(busy_pid)
        killed_at = time.time()
        reading = await until(sig, lambda r: not r.active_now)
        assert reading.at is not None
        # The last busy sample ended at most one sample (plus scheduling slack) after the kill.
        assert killed_at - 1.0 <= reading.at.timestamp() <= killed_at + 0.5
        assert reading.detail.startswith("no busy process since ")
        assert f"pid {busy_pid}" in reading.detail
        # The reading stays put while nothing else happens.
        later = await until(sig, lambda r: r is not None, timeout_s=1)
        assert later.at == reading.at
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_server_that_exits_ends_the_busy_spell(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(py(BUSY.format(seconds=30)))
    sig = ProcessSignal(server.pid, FAST)
    task = asyncio.create_task(sig.run())
    try:
        await until(sig, lambda r: r.active_now)
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(10)
        killed_at = time.time()
        reading = await until(sig, lambda r: not r.active_now)
        assert reading.at is not None and killed_at - 1.0 <= reading.at.timestamp() <= killed_at + 0.5
        assert sig.tree_pids() == frozenset()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_sleeping_job_and_the_servers_own_cpu_do_not_count(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(py(SLEEP.format(seconds=30)), busy=True)
    sig = ProcessSignal(server.pid, FAST)
    before = cpu_s(server.pid)
    readings = sample_for([sig], 1.5)
    assert cpu_s(server.pid) - before > 0.3, "the fake server should have been busy meanwhile"
    assert not any(r.active_now or r.at for r in readings), readings[-1]
    assert readings[-1].detail.startswith(
        "no process used 10 % CPU for 1 s of the last 3 s (1 processes watched"
    )


def test_a_brief_spike_does_not_count(fake_server: Callable[..., FakeServer]) -> None:
    spike = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)\n"
    server = fake_server(py(spike))
    sig = ProcessSignal(server.pid, FAST)
    readings = sample_for([sig], 2.0)
    assert cpu_s(server.children[0]) >= 0.29, "the spike should have run"
    assert not any(r.active_now or r.at for r in readings), [r.detail for r in readings if r.at]


def test_ignored_processes_and_the_agent_do_not_count(
    fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    # A process named like a language server, via a symlink: its name (comm) becomes "pylsp".
    pylsp = tmp_path / "pylsp"
    pylsp.symlink_to(sys.executable)
    server = fake_server(
        [str(pylsp), "-c", BUSY.format(seconds=30)], py(BUSY.format(seconds=30) + "# ignore-me")
    )
    lsp_pid, marked_pid = server.children
    ignoring = ProcessSignal(server.pid, replace(FAST, ignore=(*DEFAULT_PROCESS_IGNORE, "*ignore-me*")))
    # pylsp is ignored by default, and the agent's own subtree never counts: here the "agent" is the marked job.
    as_agent = ProcessSignal(server.pid, FAST, agent_pid=marked_pid)
    seeing_all = ProcessSignal(server.pid, replace(FAST, ignore=()))
    ignored_readings: list[ActivityReading] = []
    deadline = time.monotonic() + 10
    while not seeing_all.reading(now()).active_now:
        assert time.monotonic() < deadline, seeing_all.reading(now())
        for sig in (ignoring, as_agent, seeing_all):
            sig.sample()
        ignored_readings += [ignoring.reading(now()), as_agent.reading(now())]
        time.sleep(0.1)
    assert not any(r.active_now or r.at for r in ignored_readings), [
        r.detail for r in ignored_readings if r.at
    ]
    assert ignoring.tree_pids() == frozenset() and as_agent.tree_pids() == frozenset()
    assert {lsp_pid, marked_pid} == seeing_all.tree_pids()


def test_short_lived_children_count_through_their_parent(fake_server: Callable[..., FakeServer]) -> None:
    # A shell loop of short busy commands: most of them start and exit between two samples.
    loop = (
        "end=$((SECONDS+30)); while [ $SECONDS -lt $end ]; do "
        "sh -c 'i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done'; done"
    )
    server = fake_server(["bash", "-c", loop])
    shell_pid = server.children[0]
    sig = ProcessSignal(server.pid, ProcessSignalOptions(sample_interval_s=0.5, window_s=3.0))
    deadline = time.monotonic() + 10
    sig.sample()
    while not sig.reading(now()).active_now:
        assert time.monotonic() < deadline, sig.reading(now())
        time.sleep(0.5)
        sig.sample()
    assert f"pid {shell_pid} `bash" in sig.reading(now()).detail or "`sh -c" in sig.reading(now()).detail


def test_detached_jobs_count_only_with_user_processes(fake_server: Callable[..., FakeServer]) -> None:
    # `setsid nohup job & disown` then closing the terminal: the job is reparented out of the tree.
    detach = (
        "import os, subprocess, sys\n"
        f"job = subprocess.Popen([sys.executable, '-c', {BUSY.format(seconds=20)!r}], start_new_session=True,\n"
        "                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(job.pid, flush=True)\n"
    )
    server = fake_server()
    out = subprocess.run(py(detach), capture_output=True, text=True, check=True, timeout=20)
    job_pid = int(out.stdout)
    server.extra_pids.append(job_pid)
    tree_only = ProcessSignal(server.pid, FAST)
    with_user = ProcessSignal(server.pid, replace(FAST, include_user_processes=True))
    for sig in (tree_only, with_user):
        sig.sample()
    assert job_pid not in tree_only.tree_pids()
    assert job_pid in with_user.tree_pids()
    # Never the agent (this test process), the server itself, or the server's ancestors.
    assert os.getpid() not in with_user.tree_pids() and server.pid not in with_user.tree_pids()


def test_describe_process_masks_secrets_and_stays_short() -> None:
    argv = [
        "/usr/bin/python3",
        "-m",
        "app",
        "--IdentityProvider.token=abc123",
        "--password",
        "hunter2",
    ]
    label = describe_process(argv, "python3")
    assert "abc123" not in label and "hunter2" not in label
    assert label == "python3 -m app --IdentityProvider.token=*** --password ***"
    assert describe_process([], "kworker") == "kworker"
    assert len(describe_process(["python", "x" * 200], "python")) == 60


async def test_a_nohup_job_from_a_real_jupyter_terminal_is_work(jupyter: LocalServer) -> None:
    marker = "lamplighter-nohup-test"
    # One line, so the terminal's shell runs it as typed; it stops by itself after 30 s.
    job = f"import time; end = time.time() + 30; exec('while time.time() < end: pass')  # {marker}"
    sig = ProcessSignal(port=jupyter.port, options=FAST)
    sig.sample()
    assert f"under pid {jupyter.process.pid} `" in sig.reading(now()).detail
    task = asyncio.create_task(sig.run())
    headers = {"Authorization": f"token {jupyter.token}"}
    try:
        async with httpx.AsyncClient(base_url=jupyter.url, headers=headers) as client:
            answer = await client.post("api/terminals")
            answer.raise_for_status()
            name = answer.json()["name"]
        ws_url = jupyter.url.replace("http://", "ws://") + f"terminals/websocket/{name}"
        async with connect(ws_url, additional_headers=headers) as ws:
            command = f'nohup {sys.executable} -c "{job}" >/dev/null 2>&1 &\r'
            await ws.send(json.dumps(["stdin", command]))
            reading = await until(sig, lambda r: r.active_now and "python" in r.detail, timeout_s=20)
        busy_pid = int(reading.detail.split()[1])
        assert marker in " ".join(psutil.Process(busy_pid).cmdline())
        assert jupyter.process.pid in [parent.pid for parent in psutil.Process(busy_pid).parents()]
        kill(busy_pid)
        reading = await until(sig, lambda r: not r.active_now)
        assert reading.at is not None and f"pid {busy_pid}" in reading.detail
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for proc in psutil.Process(jupyter.process.pid).children(recursive=True):
            try:
                if marker in " ".join(proc.cmdline()):
                    kill(proc.pid)
            except psutil.Error:
                pass
