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
from lamplighter.processinfo import describe_process
from lamplighter.signals.processes import (
    DEFAULT_PROCESS_IGNORE,
    ProcessSignal,
    ProcessSignalOptions,
)
from tests.waiting import wait_until, wait_until_async

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

    def met() -> ActivityReading | None:
        reading = sig.reading(now())
        return reading if predicate(reading) else None

    return await wait_until_async(met, timeout_s=timeout_s, what="the process signal's reading")


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
        "no process used 10 % CPU for 0.2 s of the last 3 s (1 processes watched in tree scope"
    )


def test_a_brief_spike_does_not_count(fake_server: Callable[..., FakeServer]) -> None:
    # One spike shorter than a busy sample's threshold can make at most one sample busy, whichever
    # way it falls across two samples: two busy samples are needed to count.
    spike = "import time\nend = time.process_time() + 0.08\nwhile time.process_time() < end: pass\ntime.sleep(30)\n"
    server = fake_server(py(spike))
    sig = ProcessSignal(server.pid, ProcessSignalOptions(sample_interval_s=1.0, window_s=3.0))
    readings: list[ActivityReading] = []
    after_spike: list[bool] = []

    # Sample once a second until two samples were taken after the spike ran (a loaded machine may
    # start the child late); /proc counts CPU in 10 ms ticks, hence 0.06 for an 0.08 s spike.
    def two_samples_after_the_spike() -> bool:
        sig.sample()
        readings.append(sig.reading(now()))
        after_spike.append(cpu_s(server.children[0]) >= 0.06)
        return sum(after_spike) >= 2

    wait_until(two_samples_after_the_spike, timeout_s=30, poll_s=1.0, what="two samples after the spike ran")
    assert not any(r.active_now or r.at for r in readings), [r.detail for r in readings if r.at]


def test_a_job_that_computes_in_bursts_counts(fake_server: Callable[..., FakeServer]) -> None:
    # Busy 0.3 s of every 1.2 s (a duty cycle of a quarter): under the old "a third of the window" rule
    # this never counted; two busy samples within the window now do.
    bursts = "import time\nfor _ in range(20):\n    end = time.time() + 0.3\n    while time.time() < end: pass\n    time.sleep(0.9)\n"
    server = fake_server(py(bursts))
    sig = ProcessSignal(server.pid, FAST)
    readings = sample_for([sig], 3.0)
    assert any(r.at is not None for r in readings), readings[-1]


def test_the_first_window_is_waited_for(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server()
    sig = ProcessSignal(server.pid, FAST)
    first = sig.reading(now())
    assert first.ready_at is not None and "first window" in first.detail
    sig.sample()  # the baseline: nothing to compare with yet
    assert sig.reading(now()).ready_at is not None

    def ready() -> bool:
        if sig.reading(now()).ready_at is None:
            return True
        sig.sample()
        return False

    wait_until(ready, timeout_s=10, poll_s=0.1, what="the process signal's first window")
    assert not sig.reading(now()).active_now


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

    def seen_by_all() -> bool:
        for sig in (ignoring, as_agent, seeing_all):
            sig.sample()
        ignored_readings.extend([ignoring.reading(now()), as_agent.reading(now())])
        return seeing_all.reading(now()).active_now

    wait_until(seen_by_all, timeout_s=10, poll_s=0.1, what="the unfiltered signal to see the busy jobs")
    assert not any(r.active_now or r.at for r in ignored_readings), [
        r.detail for r in ignored_readings if r.at
    ]
    assert ignoring.tree_pids() == frozenset() and as_agent.tree_pids() == frozenset()
    assert {lsp_pid, marked_pid} == seeing_all.tree_pids()


@pytest.mark.parametrize("use_procfs", [True, False], ids=["procfs", "psutil"])
def test_a_command_line_read_during_exec_is_read_again(
    fake_server: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch, use_procfs: bool
) -> None:
    # Popen returns once exec() has begun, but the kernel sets up the new command line a moment later:
    # until then /proc/<pid>/cmdline is empty (right after Popen it was, 271 times in 300 here). Under
    # load the first sample can land in that moment. The first read of the marked job's command line
    # is made to answer that empty line, as the kernel does; nothing else is stood in for.
    server = fake_server(py(BUSY.format(seconds=30) + "# ignore-me"))
    (marked_pid,) = server.children
    real_cmdline = psutil.Process.cmdline
    reads: list[int] = []

    def cmdline(self: psutil.Process) -> list[str]:
        if self.pid == marked_pid:
            reads.append(self.pid)
            if len(reads) == 1:
                return []
        return real_cmdline(self)

    monkeypatch.setattr(psutil.Process, "cmdline", cmdline)
    ignoring = ProcessSignal(
        server.pid, replace(FAST, ignore=("*ignore-me*",), scope="tree"), use_procfs=use_procfs
    )
    seeing_all = ProcessSignal(server.pid, replace(FAST, ignore=(), scope="tree"), use_procfs=use_procfs)
    ignored_readings: list[ActivityReading] = []

    def seen_by_all() -> bool:
        for sig in (ignoring, seeing_all):
            sig.sample()
        ignored_readings.append(ignoring.reading(now()))
        return seeing_all.reading(now()).active_now

    wait_until(seen_by_all, timeout_s=10, poll_s=0.1, what="the unfiltered signal to see the busy job")
    assert reads, "the signal should have read the job's command line"
    assert not any(r.active_now or r.at for r in ignored_readings), [
        r.detail for r in ignored_readings if r.at
    ]
    assert ignoring.tree_pids() == frozenset() and seeing_all.tree_pids() == {marked_pid}


def test_an_ignored_process_that_execs_into_real_work_counts(
    fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    # exec() keeps the pid, the start time and (here) the name `python`, and changes the command line:
    # judged by the one it had before, a job that a wrapper exec()s into would be ignored for good.
    go = tmp_path / "go"
    waiter = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        f"os.execv(sys.executable, [sys.executable, '-c', {BUSY.format(seconds=30)!r}])\n"
    )
    server = fake_server(py(waiter, "ignore-me"))
    (pid,) = server.children
    sig = ProcessSignal(server.pid, replace(FAST, ignore=("*ignore-me*",), scope="tree"), use_procfs=True)
    wait_until(
        lambda: "ignore-me" in psutil.Process(pid).cmdline(), timeout_s=10, what="the waiter's command line"
    )
    for _ in range(3):
        sig.sample()  # the signal knows the waiter, and ignores it
    assert sig.tree_pids() == frozenset()
    go.touch()
    wait_until(
        lambda: "ignore-me" not in psutil.Process(pid).cmdline(), timeout_s=10, what="the exec() into the job"
    )

    def counted() -> bool:
        sig.sample()
        return sig.reading(now()).active_now

    wait_until(counted, timeout_s=15, poll_s=0.1, what="the job the waiter became to count")
    assert sig.tree_pids() == {pid}


def test_short_lived_children_count_through_their_parent(fake_server: Callable[..., FakeServer]) -> None:
    # A shell loop of short busy commands: most of them start and exit between two samples.
    loop = (
        "end=$((SECONDS+30)); while [ $SECONDS -lt $end ]; do "
        "sh -c 'i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done'; done"
    )
    server = fake_server(["bash", "-c", loop])
    shell_pid = server.children[0]
    sig = ProcessSignal(server.pid, ProcessSignalOptions(sample_interval_s=0.5, window_s=3.0))
    sig.sample()

    def busy() -> bool:
        sig.sample()
        return sig.reading(now()).active_now

    wait_until(busy, timeout_s=10, poll_s=0.5, what="the shell loop to count as busy")
    assert f"pid {shell_pid} `bash" in sig.reading(now()).detail or "`sh -c" in sig.reading(now()).detail


DETACH = (
    "import os, subprocess, sys\n"
    f"job = subprocess.Popen([sys.executable, '-c', {BUSY.format(seconds=20)!r}], start_new_session=True,\n"
    "                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(job.pid, flush=True)\n"
)
"""`setsid nohup job & disown` then closing the terminal: the job is reparented out of the tree."""

NOBODY = 65534


def test_detached_jobs_count_by_scope(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server()
    out = subprocess.run(py(DETACH), capture_output=True, text=True, check=True, timeout=20)
    job_pid = int(out.stdout)
    server.extra_pids.append(job_pid)
    tree_only = ProcessSignal(server.pid, replace(FAST, scope="tree"))
    container = ProcessSignal(server.pid, replace(FAST, scope="container"))
    as_user = ProcessSignal(server.pid, replace(FAST, scope="user"))
    for sig in (tree_only, container, as_user):
        sig.sample()
    assert job_pid not in tree_only.tree_pids()
    assert job_pid in container.tree_pids()
    # Never the agent (this test process), the server itself, or the server's ancestors.
    assert os.getpid() not in container.tree_pids() and server.pid not in container.tree_pids()
    if os.geteuid() == 0:
        # On a host, root's "own processes" are every daemon: the user scope never counts them.
        assert as_user.tree_pids() == frozenset()


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and a system python"
)
def test_a_users_detached_job_counts_for_that_users_server() -> None:
    # The system interpreter, not the virtualenv's inside root's home: stdlib-only code runs as nobody.
    python = "/usr/bin/python3"
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": [], "cwd": "/"}
    server = subprocess.Popen([python, "-c", SLEEP.format(seconds=30)], **as_nobody)  # type: ignore[call-overload]
    job_pid = None
    try:
        out = subprocess.run(
            [python, "-c", DETACH], capture_output=True, text=True, check=True, timeout=20, **as_nobody
        )
        job_pid = int(out.stdout)
        auto = ProcessSignal(server.pid, FAST)
        auto.sample()
        assert job_pid in auto.tree_pids()
        assert "user scope" in auto.reading(now()).detail
        # Another user's job (root's, this test's own children) never counts for nobody's server.
        assert not any(psutil.Process(pid).uids().real != NOBODY for pid in auto.tree_pids())
    finally:
        if job_pid is not None:
            kill(job_pid)
        server.kill()
        server.wait(10)


_IN_NAMESPACE = """
import json, subprocess, sys, time
from datetime import datetime, timezone
from lamplighter.signals.processes import ProcessSignal, ProcessSignalOptions
server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
job = subprocess.run([sys.executable, "-c", sys.argv[1]], check=True, stdout=subprocess.PIPE, text=True)
sig = ProcessSignal(server.pid, ProcessSignalOptions(sample_interval_s=0.1, window_s=3.0))
sig.sample()
deadline = time.monotonic() + 10
while not sig.reading(datetime.now(timezone.utc)).active_now and time.monotonic() < deadline:
    time.sleep(0.1)
    sig.sample()
reading = sig.reading(datetime.now(timezone.utc))
print(json.dumps({"job": int(job.stdout), "tree": sorted(sig.tree_pids()), "active": reading.active_now,
                  "server": server.pid, "detail": reading.detail}))
"""

# A double fork with setsid: the job ends up a child of pid 1, outside the server's tree.
_DOUBLE_FORK = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        print(os.getpid(), flush=True)\n"
    "        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
    "        end = time.time() + 15\n"
    "        while time.time() < end: pass\n"
    "    os._exit(0)\n"
    "os.wait()\n"
)


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(), reason="needs root and unshare"
)
def test_a_setsid_double_forked_job_counts_inside_a_container() -> None:
    # A PID namespace, as in a Docker container: its processes are the app's, whoever their parent is.
    # Its pid 1 is a plain init (a shell that waits), as tini or supervisord is in a real container.
    script = f'{sys.executable} -c "$0" "$1"; true'
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, _IN_NAMESPACE, _DOUBLE_FORK],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["job"] in found["tree"] and found["server"] not in found["tree"], found
    assert found["active"], found


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
    assert f"server pid {jupyter.process.pid} `" in sig.reading(now()).detail
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
