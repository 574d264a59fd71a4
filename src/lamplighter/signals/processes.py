"""The process signal: CPU used by the app's process tree feeds the *work* clock.

A ``nohup python train.py &`` started from a terminal prints nothing, so the terminal looks idle
and the kernel list shows nothing: only the process tree shows that work is running. This signal
samples the CPU time of every process below the app's server (kernels, terminal shells and all they
started) every ``sample_interval_s``, and reports sustained use (see
:class:`~lamplighter.signals.BusyWindow`) as work, naming the process that used the most::

    pid 4242 `python train.py` used 97 % CPU over the last 60 s

What counts:

- the server's descendants, not the server itself: its own CPU is its pollers and request handling;
- besides the tree, what the scope adds (:data:`SCOPES`): inside a container every process of the
  container, on a host the server user's own processes (jobs that were ``disown``-ed, ``setsid``-ed
  or double-forked are reparented to init or a subreaper, out of the tree), except the ancestors of
  the server and of the agent (supervisors, login shells);
- never the agent and what it started, nor a process matching an ``ignore`` glob (language servers
  by default) and everything that process started;
- CPU of short-lived children that exited between two samples, through their parent's "children"
  CPU times, minus what was already seen of them (so a shell loop of one-second commands counts).

On Linux a sample reads ``/proc/<pid>/stat`` once per process on the host (see
``bench/bench_signals.py`` for its cost); elsewhere it uses :func:`psutil.process_iter`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatchcase

import psutil

from lamplighter.errors import ConfigError
from lamplighter.model import ActivityReading, Clock, format_time
from lamplighter.processinfo import describe_process, find_listening_pid
from lamplighter.signals import BusyWindowOptions, UsageSummary, format_seconds, format_share, sample_every

__all__ = [
    "DEFAULT_PROCESS_IGNORE",
    "SCOPES",
    "ProcessSignal",
    "ProcessSignalOptions",
]

logger = logging.getLogger(__name__)

UTC = timezone.utc

DEFAULT_PROCESS_IGNORE: tuple[str, ...] = (
    # Language servers index in bursts whenever a file is opened: that is the editor, not the user's work.
    "pylsp",
    "pyls",
    "jedi-language-server",
    "pyright*",
    "basedpyright*",
    "ruff-lsp",
    "*-language-server",
    "*-langserver",
    # Per-user daemons: only met outside the tree (user or container scope), and never somebody's job.
    "systemd",
    "(sd-pam)",
    "dbus-daemon",
    "dbus-broker*",
    "ssh-agent",
    "gpg-agent",
    "sshd",
    "sshd:*",
)
"""Globs of processes that never count (their descendants don't either)."""

SCOPES: tuple[str, ...] = ("auto", "tree", "user", "container")
"""``tree``: the server's descendants only. ``user``: also the server user's other processes (jobs that
left the tree: a deleted terminal's ``nohup``, ``setsid``, a double fork), never another user's, and
never root's on a host (that would be every daemon). ``container``: every process in this PID
namespace, which inside a container is the app's own. ``auto``: ``container`` inside a container,
else ``user`` for a server that does not run as root, else ``tree``."""

# Kernel threads on Linux hang below kthreadd (pid 2); they are never a user's job.
_KERNEL_PIDS = frozenset({0, 2})


@dataclass(frozen=True)
class ProcessSignalOptions(BusyWindowOptions):
    """Tuning of the process signal: the busy window's cadence (:class:`BusyWindowOptions`) and what counts."""

    cpu_threshold: float = 0.1
    """Share of one core (0.1 = 10 %) the tree must use for a sample to be busy."""
    scope: str = "auto"
    """Which processes count besides the server's tree (see :data:`SCOPES`)."""
    ignore: tuple[str, ...] = DEFAULT_PROCESS_IGNORE
    """Globs matched against a process's name, the base names of its first three command-line words and
    its whole command line; a match is ignored together with everything it started."""

    def __post_init__(self) -> None:
        self._check_window("process signal")
        if self.cpu_threshold <= 0:
            raise ConfigError(f"process signal: cpu_threshold must be positive, got {self.cpu_threshold:g}")
        if self.scope not in SCOPES:
            raise ConfigError(f"process signal: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")


def _ignored(patterns: Iterable[str], name: str, argv: list[str]) -> bool:
    words = [name, *(os.path.basename(word) for word in argv[:3])]
    line = " ".join(argv)
    return any(fnmatchcase(word, pattern) for pattern in patterns for word in (*words, line))


@dataclass(frozen=True)
class _Stat:
    """One process in one sample. ``ident`` tells a reused pid apart (start time)."""

    ppid: int
    ident: float
    self_s: float  # user + system CPU seconds of the process itself
    children_s: float  # CPU seconds of its children that exited and were waited for
    name: str
    # Where the command line lies in memory (procfs' arg_start, arg_end): exec() builds a new one, also
    # when the name stays (python exec()ing python). 0s where hidden from us (another user's, psutil).
    args_at: tuple[int, int] = (0, 0)


@dataclass
class _Known:
    """What is cached per process for its whole life: its command line and owner."""

    name: str
    argv: list[str]
    label: str
    uid: int | None = None
    ignored: bool = False
    unread: bool = False  # the command line read empty: read it again next time (see _Scanner._known)


def _scan_procfs(clock_ticks: float) -> dict[int, _Stat]:
    """Every process on the host from ``/proc/<pid>/stat``: one read each, the cheapest way on Linux."""
    table: dict[int, _Stat] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # Raw os.open/os.read: a buffered file object costs a third more per process.
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
            try:
                data = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            continue  # exited since listdir, or hidden from us
        close = data.rfind(b")")
        fields = data[close + 2 :].split()
        if close < 0 or len(fields) < 20:
            continue
        # Field numbers after the ")": 1 ppid, 11 utime, 12 stime, 13 cutime, 14 cstime, 19 starttime,
        # 45 arg_start, 46 arg_end (older kernels stop before them).
        table[int(entry)] = _Stat(
            ppid=int(fields[1]),
            ident=float(fields[19]),
            self_s=(int(fields[11]) + int(fields[12])) / clock_ticks,
            children_s=(int(fields[13]) + int(fields[14])) / clock_ticks,
            name=data[data.find(b"(") + 1 : close].decode("utf-8", "replace"),
            args_at=(int(fields[45]), int(fields[46])) if len(fields) > 46 else (0, 0),
        )
    return table


def _scan_psutil() -> dict[int, _Stat]:
    """Every process on the host through psutil: portable, about three times the cost of procfs."""
    table: dict[int, _Stat] = {}
    for proc in psutil.process_iter(["ppid", "cpu_times", "name", "create_time"], ad_value=None):
        info = proc.info
        times = info.get("cpu_times")
        if times is None or info.get("ppid") is None:
            continue
        table[proc.pid] = _Stat(
            ppid=int(info["ppid"]),
            ident=float(info.get("create_time") or 0.0),
            self_s=times.user + times.system,
            children_s=getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0),
            name=str(info.get("name") or ""),
        )
    return table


@dataclass
class _Measured:
    """What one sample found, handed from the sampling thread to the event loop."""

    mono: float
    wall: float
    dt: float
    usage: dict[str, float]
    scope: frozenset[int]
    root_label: str
    scope_name: str = "tree"
    status: str | None = None  # why there is no tree to look at (no server, server gone)
    baseline: bool = False  # the first sample: nothing to compare with yet


@dataclass
class _Scanner:
    """The sampling state; only ever touched by one sampling call at a time."""

    options: ProcessSignalOptions
    agent_pid: int
    use_procfs: bool
    root_pid: int | None
    port: int | None
    root_ident: float | None = None
    prev: dict[int, _Stat] = field(default_factory=dict)
    prev_mono: float | None = None
    known: dict[tuple[int, float, str, tuple[int, int]], _Known] = field(default_factory=dict)
    warned_root_uid: bool = False
    clock_ticks: float = 100.0

    def scan(self) -> dict[int, _Stat]:
        return _scan_procfs(self.clock_ticks) if self.use_procfs else _scan_psutil()

    def measure(self) -> _Measured:
        table = self.scan()
        mono, wall = time.monotonic(), time.time()
        dt = mono - self.prev_mono if self.prev_mono is not None else 0.0
        baseline = self.prev_mono is None
        status = self._check_root(table)
        scope: frozenset[int] = frozenset()
        usage: dict[str, float] = {}
        root_label = ""
        scope_name = "tree"
        if status is None and self.root_pid is not None:
            root = table[self.root_pid]
            root_label = self._known(self.root_pid, root).label
            scope_name = self._scope_name(table, self.root_pid)
            scope = self._scope(table, self.root_pid, scope_name)
            if not baseline:
                usage = self._usage(table, scope)
        self.prev, self.prev_mono = table, mono
        self._forget(table)
        return _Measured(
            mono=mono,
            wall=wall,
            dt=dt,
            usage=usage,
            scope=scope,
            root_label=root_label,
            scope_name=scope_name,
            status=status,
            baseline=baseline,
        )

    def _check_root(self, table: Mapping[int, _Stat]) -> str | None:
        """Find the root, or say why there is none; a root whose pid was reused counts as gone."""
        if self.root_pid is not None:
            stat = table.get(self.root_pid)
            if stat is not None and self.root_ident in (None, stat.ident):
                self.root_ident = stat.ident
                return None
            gone = f"server pid {self.root_pid} has exited"
            if self.port is None:
                return gone
            logger.info("process signal: %s; looking for the process on port %d again", gone, self.port)
            self.root_pid, self.root_ident = None, None
        if self.port is None:
            return "no server process given"
        pid = find_listening_pid(self.port)
        if pid is None or pid not in table:
            return f"no process listens on port {self.port}"
        self.root_pid, self.root_ident = pid, table[pid].ident
        logger.info("process signal: watching the process tree of pid %d (port %d)", pid, self.port)
        return None

    def _known(self, pid: int, stat: _Stat) -> _Known:
        # Keyed by name and argument address too: exec() keeps the pid and start time but changes the
        # command line (an ignored wrapper exec()ing real work must not stay ignored).
        key = (pid, stat.ident, stat.name, stat.args_at)
        known = self.known.get(key)
        if known is None or known.unread:
            unread = False
            try:
                argv = psutil.Process(pid).cmdline()
                # A live process shows an empty command line while exec() is still setting up the new
                # one (Popen has returned by then): judged by that, an ignored job would count for good.
                unread = not argv
            except psutil.Error:
                argv = []  # a zombie, or gone already: its name will do
            known = _Known(
                name=stat.name,
                argv=argv,
                label=describe_process(argv, stat.name),
                uid=None if known is None else known.uid,
                ignored=_ignored(self.options.ignore, stat.name, argv),
                unread=unread,
            )
            self.known[key] = known
        return known

    def _uid(self, pid: int, stat: _Stat) -> int | None:
        known = self._known(pid, stat)
        if known.uid is None:
            try:
                known.uid = psutil.Process(pid).uids().real
            except psutil.Error:
                known.uid = -1  # unknown owner: never counted as the user's
        return known.uid

    def _scope_name(self, table: Mapping[int, _Stat], root: int) -> str:
        """The scope in force: the asked one, or what ``auto`` means on this machine for this server."""
        scope = self.options.scope
        if scope != "auto":
            return scope
        if self.use_procfs and _in_pid_namespace(table):
            return "container"
        return "user" if self._uid(root, table[root]) not in (0, -1) else "tree"

    def _scope(self, table: Mapping[int, _Stat], root: int, scope_name: str) -> frozenset[int]:
        """The pids whose CPU counts: the root's descendants, plus what the scope adds."""
        children: dict[int, list[int]] = {}
        for pid, stat in table.items():
            children.setdefault(stat.ppid, []).append(pid)
        scope: set[int] = set()
        todo = list(children.get(root, ()))
        while todo:
            pid = todo.pop()
            if self._is_agent(pid, root) or pid == root or self._known(pid, table[pid]).ignored:
                continue  # the agent, or an ignored daemon: skip it and all it started
            scope.add(pid)
            todo.extend(children.get(pid, ()))
        if scope_name == "user":
            uid = self._uid(root, table[root])
            if uid == 0 and not self.warned_root_uid:
                self.warned_root_uid = True
                logger.warning(
                    "process signal: the server runs as root on a host, so only its tree counts "
                    "(root's other processes are the host's daemons); inside a container use scope container"
                )
            if uid not in (0, -1):
                scope |= self._outside_tree(table, root, scope, lambda pid, stat: self._uid(pid, stat) == uid)
        elif scope_name == "container":
            scope |= self._outside_tree(table, root, scope, lambda pid, stat: True)
        return frozenset(scope)

    def _is_agent(self, pid: int, root: int) -> bool:
        # In-server mode the agent *is* the server: then nothing below it is the agent's own.
        return pid == self.agent_pid and pid != root

    def _outside_tree(
        self,
        table: Mapping[int, _Stat],
        root: int,
        tree: set[int],
        wanted: Callable[[int, _Stat], bool],
    ) -> set[int]:
        """Processes outside the tree that ``wanted`` accepts, minus the server's and the agent's
        ancestors (supervisors, login shells), the agent's descendants and ignored processes."""
        agent = self.agent_pid if self.agent_pid != root else None
        excluded = _ancestors(table, root) | {root, 1}
        if agent is not None:
            excluded |= _ancestors(table, agent) | {agent}
        verdict: dict[int, bool] = {}

        def counts(pid: int) -> bool:
            """Not the agent's or an ignored process's descendant (memoised walk up the parents)."""
            chain: list[int] = []
            answer = True
            current = pid
            while current in table and current not in _KERNEL_PIDS:
                if current in verdict:
                    answer = verdict[current]
                    break
                chain.append(current)
                stat = table[current]
                if current == agent or self._known(current, stat).ignored:
                    answer = False
                    break
                current = stat.ppid
            for seen in chain:
                verdict[seen] = answer
            return answer

        found: set[int] = set()
        for pid, stat in table.items():
            if pid in tree or pid in excluded or pid in _KERNEL_PIDS or stat.ppid in _KERNEL_PIDS:
                continue
            if wanted(pid, stat) and counts(pid):
                found.add(pid)
        return found

    def _usage(self, table: Mapping[int, _Stat], scope: frozenset[int]) -> dict[str, float]:
        """CPU seconds each process in scope used since the previous sample, keyed by its label."""
        prev = self.prev
        vanished = {pid for pid, stat in prev.items() if pid not in table or table[pid].ident != stat.ident}
        # A child that exited and was waited for shows up again in its parent's children_s. Credit what we
        # had already seen of it to the nearest ancestor still alive, so that only the rest counts: exactly
        # the CPU it used between our previous sample and its exit.
        credit: dict[int, float] = {}
        for pid in vanished:
            stat = prev[pid]
            parent = stat.ppid
            hops = 0
            while parent in vanished and hops < 64:
                parent, hops = prev[parent].ppid, hops + 1
            if parent in table and parent in prev and table[parent].ident == prev[parent].ident:
                credit[parent] = credit.get(parent, 0.0) + stat.self_s + stat.children_s
        usage: dict[str, float] = {}
        for pid in scope:
            stat = table[pid]
            before = prev.get(pid)
            if before is None or before.ident != stat.ident:
                # Born since the previous sample: all it used, it used in this interval.
                used = stat.self_s + stat.children_s
            else:
                used = max(0.0, stat.self_s - before.self_s)
                used += max(0.0, stat.children_s - before.children_s - credit.get(pid, 0.0))
            if used > 0:
                label = f"pid {pid} `{self._known(pid, stat).label}`"
                usage[label] = usage.get(label, 0.0) + used
        return usage

    def _forget(self, table: Mapping[int, _Stat]) -> None:
        if len(self.known) > 2 * len(table) + 64:
            alive = {(pid, stat.ident, stat.name, stat.args_at) for pid, stat in table.items()}
            self.known = {key: value for key, value in self.known.items() if key in alive}


def _in_pid_namespace(table: Mapping[int, _Stat]) -> bool:
    """True inside a container's PID namespace: the host's kthreadd (pid 2, parent 0) is not visible there."""
    kthreadd = table.get(2)
    return kthreadd is None or kthreadd.ppid != 0 or kthreadd.name != "kthreadd"


def _ancestors(table: Mapping[int, _Stat], pid: int) -> set[int]:
    found: set[int] = set()
    current = table[pid].ppid if pid in table else 0
    while current in table and current not in found and current not in _KERNEL_PIDS:
        found.add(current)
        current = table[current].ppid
    return found


class ProcessSignal:
    """Samples the CPU used by a server's process tree; sustained use is work (see the module docstring).

    Give the server's ``root_pid``, or the ``port`` it listens on (then the pid is looked up, and looked
    up again if the server restarts). ``agent_pid`` (default: this process) and everything it started
    never counts. ``use_procfs`` picks the sampler: None means ``/proc`` on Linux, psutil elsewhere.
    """

    name = "processes"

    def __init__(
        self,
        root_pid: int | None = None,
        options: ProcessSignalOptions | None = None,
        *,
        port: int | None = None,
        agent_pid: int | None = None,
        use_procfs: bool | None = None,
    ) -> None:
        if (root_pid is None) == (port is None):
            raise ConfigError("process signal: give exactly one of the server pid and the server port")
        self.options = options or ProcessSignalOptions()
        procfs = (
            sys.platform.startswith("linux") and os.path.isdir("/proc") if use_procfs is None else use_procfs
        )
        self._scanner = _Scanner(
            options=self.options,
            agent_pid=os.getpid() if agent_pid is None else agent_pid,
            use_procfs=procfs,
            root_pid=root_pid,
            port=port,
            clock_ticks=float(os.sysconf("SC_CLK_TCK")) if procfs else 100.0,
        )
        self._window = self.options.busy_window(self.options.cpu_threshold)
        self._scope: frozenset[int] = frozenset()
        self._status = "no sample yet"
        self._watching = True  # False while there is no server tree to look at
        self._failing = False
        self._created_wall = time.time()
        self._baseline_wall: float | None = None
        self._lock = asyncio.Lock()  # one sample at a time: run() and refresh() share the scanner

    async def run(self) -> None:
        """Sample every ``sample_interval_s`` until cancelled; a failed sample is logged and skipped."""
        await sample_every(self.options.sample_interval_s, self._sample_async)

    async def refresh(self) -> None:
        """Sample now unless the latest sample is fresh (a quarter interval), so a stop sees a job just begun."""
        if self.options.is_fresh(self._window.last_sample_wall or self._baseline_wall):
            return
        await self._sample_async()

    async def _sample_async(self) -> None:
        async with self._lock:
            try:
                measured = await asyncio.to_thread(self._scanner.measure)
            except Exception:
                if not self._failing:
                    logger.exception(
                        "process signal: a sample failed; retrying every %g s", self.options.sample_interval_s
                    )
                self._failing = True
            else:
                if self._failing:
                    logger.info("process signal: sampling works again")
                self._failing = False
                self._record(measured)

    def sample(self) -> None:
        """Take one sample now, blocking (``run`` does this off the event loop); for tests and benchmarks."""
        self._record(self._scanner.measure())

    def _ready_at(self, now: datetime, fresh: bool) -> tuple[datetime | None, str]:
        """When this signal can tell busy from idle (see :meth:`BusyWindow.ready_at`); None if it can now.

        A signal with nothing to watch, or whose sampler stopped, is not waited for: that would keep
        an app up forever on a broken sampler. Its reading says why instead.
        """
        first = "waiting for the process signal's first window"
        if not self._watching:
            return None, ""
        if self._baseline_wall is None:
            waited = now.timestamp() - self._created_wall
            if waited > max(3 * self.options.sample_interval_s, 5.0):
                return None, ""
            return now + timedelta(seconds=self.options.sample_interval_s), first
        if not fresh and self._window.last_sample_wall is not None:
            return None, ""
        if self._window.last_sample_wall is None:
            return _utc(self._baseline_wall + self.options.effective_min_busy_s), first
        ready = _utc(self._window.ready_at())
        if ready is not None and self._window.covered_s >= self.options.effective_min_busy_s:
            return ready, "a process just became busy: waiting to see whether it keeps on"
        return ready, first

    def tree_pids(self) -> frozenset[int]:
        """The pids that counted in the latest sample (for the GPU signal's attribution)."""
        return self._scope

    def reading(self, now: datetime) -> ActivityReading:
        window = self._window
        stale_s = max(3 * self.options.sample_interval_s, 30.0)
        last_sample = window.last_sample_wall
        fresh = last_sample is not None and now.timestamp() - last_sample <= stale_s
        ready_at, waiting = self._ready_at(now, fresh)
        if window.active and fresh and window.last_busy_summary is not None:
            return ActivityReading(
                source=self.name,
                clock=Clock.WORK,
                at=now,
                detail=_describe_busy(window.last_busy_summary),
                active_now=True,
            )
        at = _utc(window.last_busy_wall)
        if at is not None and window.last_busy_summary is not None:
            if window.active:  # active but stale: the sampler stopped
                detail = f"no process sample since {format_time(_utc(last_sample))}; last: "
            else:
                detail = f"no busy process since {format_time(at)}; before that "
            detail += _describe_busy(window.last_busy_summary)
            return ActivityReading(
                source=self.name, clock=Clock.WORK, at=min(at, now), detail=detail, ready_at=ready_at
            )
        detail = self._status
        if ready_at is not None:
            detail = f"{waiting} (until {format_time(ready_at)}); {detail}"
        return ActivityReading(source=self.name, clock=Clock.WORK, at=None, detail=detail, ready_at=ready_at)

    def _record(self, measured: _Measured) -> None:
        self._scope = measured.scope
        if self._baseline_wall is None:
            self._baseline_wall = measured.wall
        self._watching = measured.status is None
        if measured.status is not None:
            self._status = f"process signal: {measured.status}"
            if not measured.baseline:  # nothing to watch is nothing busy: end a busy spell now
                self._window.add(mono=measured.mono, wall=measured.wall, dt=measured.dt, usage={})
            return
        opts = self.options
        self._status = (
            f"no process used {format_share(opts.cpu_threshold)} CPU for "
            f"{format_seconds(opts.effective_min_busy_s)} of the last {format_seconds(opts.window_s)} "
            f"({len(measured.scope)} processes watched in {measured.scope_name} scope, "
            f"server pid {self._scanner.root_pid} `{measured.root_label}`)"
        )
        if not measured.baseline:
            self._window.add(mono=measured.mono, wall=measured.wall, dt=measured.dt, usage=measured.usage)


def _describe_busy(summary: UsageSummary) -> str:
    text = (
        f"{summary.top_label} used {format_share(summary.top_share)} CPU "
        f"over the last {format_seconds(summary.span_s)}"
    )
    if summary.users > 1:
        text += f" ({format_share(summary.total_share)} in all across {summary.users} processes)"
    return text


def _utc(wall: float | None) -> datetime | None:
    return datetime.fromtimestamp(wall, UTC) if wall is not None else None
