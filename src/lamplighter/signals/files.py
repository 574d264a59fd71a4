"""The file signal: changes under the workspace feed the *interaction* clock.

Somebody who edits and saves files in an editor, or creates and deletes them, is using the app even
when no kernel runs. This signal watches the configured paths with :func:`watchfiles.awatch`
(inotify on Linux, a poller where that cannot work) and remembers the newest change::

    file notebooks/analysis.py changed at 13:02:05 UTC

Noise is ignored: version-control and cache folders, ``.ipynb_checkpoints``, ``node_modules``, editor
swap files, the journal (with its ``-wal``/``-shm``/``-journal`` siblings) and any configured glob.
The time of a change is when the watcher delivered it (debounced for at most ``debounce_ms``). No
change seen yet means ``at=None``, unless ``seed_from_mtime`` asks for the newest modification time
already on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from watchfiles import awatch

from lamplighter.errors import ConfigError
from lamplighter.model import ActivityReading, Clock, format_time

__all__ = ["DEFAULT_FILE_IGNORE", "FileSignal", "FileSignalOptions"]

logger = logging.getLogger(__name__)

UTC = timezone.utc
_RECENT_MAX = 32

DEFAULT_FILE_IGNORE: tuple[str, ...] = (
    # Written by tools, not people: version control, caches, environments, checkpoints.
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "*.pyc",
    ".ipynb_checkpoints",
    ".virtual_documents",
    "node_modules",
    ".cache",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
    ".nox",
    ".venv",
    ".ipython",
    # Jupyter's runtime files (kernel connection files) and Lab's saved layout change without anyone typing.
    ".local",
    ".jupyter",
    # Editor swap and lock files.
    "*.swp",
    "*.swx",
    "*~",
    ".~lock.*",
    ".DS_Store",
)
"""Globs of paths whose changes never count. A glob without ``/`` is matched against every path
component (so it ignores a whole folder); one with ``/`` against the path relative to the watched root
and each of its parent folders."""


@dataclass(frozen=True)
class FileSignalOptions:
    """Tuning of the file signal; units are in the names."""

    ignore: tuple[str, ...] = DEFAULT_FILE_IGNORE
    """Globs of paths whose changes never count (see :data:`DEFAULT_FILE_IGNORE`)."""
    seed_from_mtime: bool = False
    """At start, take the newest modification time already under the paths as the last change."""
    seed_max_files: int = 20_000
    """Stop the seeding walk after this many files, so a huge workspace cannot stall the start."""
    debounce_ms: int = 1_600
    """Longest a burst of changes is grouped before it is reported, in milliseconds."""
    force_polling: bool = False
    """Poll instead of inotify (network file systems where other machines write)."""
    poll_delay_ms: int = 2_000
    """Milliseconds between two polls, when polling."""
    retry_interval_s: float = 5.0
    """Seconds between looks for watched paths that do not exist yet, and between restarts after an error."""

    def __post_init__(self) -> None:
        if self.debounce_ms <= 0 or self.poll_delay_ms <= 0 or self.retry_interval_s <= 0:
            raise ConfigError("file signal: debounce_ms, poll_delay_ms and retry_interval_s must be positive")


class _Filter:
    """The watchfiles filter: True keeps a change."""

    def __init__(self, roots: Sequence[Path], patterns: Iterable[str], journal_path: Path | None) -> None:
        # Longest first, so a path is made relative to the innermost watched root.
        self._roots = sorted((str(root) for root in roots), key=len, reverse=True)
        self._names = tuple(p for p in patterns if "/" not in p)
        self._paths = tuple(p.strip("/") for p in patterns if "/" in p)
        self._journal: frozenset[str] = frozenset()
        if journal_path is not None:
            base = str(journal_path.absolute())
            self._journal = frozenset(base + suffix for suffix in ("", "-wal", "-shm", "-journal"))

    def __call__(self, change: object, path: str) -> bool:
        return self.keeps(path)

    def relative(self, path: str) -> str:
        for root in self._roots:
            if path == root:
                return os.path.basename(path)
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return PurePosixPath(*Path(path[len(root) :].lstrip(os.sep)).parts).as_posix()
        return path

    def keeps(self, path: str) -> bool:
        if path in self._journal:
            return False
        rel = self.relative(path)
        parts = PurePosixPath(rel).parts
        if any(fnmatchcase(part, pattern) for pattern in self._names for part in parts):
            return False
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return not any(fnmatchcase(prefix, pattern) for pattern in self._paths for prefix in prefixes)


class FileSignal:
    """Watches workspace paths; the newest change is interaction (see the module docstring).

    ``paths`` are folders or files to watch (recursively); ``journal_path`` is lamplighter's own
    journal, whose writes must not look like somebody's work.
    """

    name = "files"

    def __init__(
        self,
        paths: Sequence[str | Path],
        options: FileSignalOptions | None = None,
        *,
        journal_path: str | Path | None = None,
    ) -> None:
        if not paths:
            raise ConfigError("file signal: give at least one path to watch")
        self.options = options or FileSignalOptions()
        self.paths = tuple(Path(path).expanduser().absolute() for path in paths)
        journal = Path(journal_path).expanduser() if journal_path is not None else None
        self._filter = _Filter(self.paths, self.options.ignore, journal)
        self._last_wall: float | None = None
        self._last_path = ""
        self._seeded = False
        self._recent: deque[str] = deque(maxlen=_RECENT_MAX)
        self._status = self._no_change_yet = "no file change seen yet under " + ", ".join(
            map(str, self.paths)
        )

    async def run(self) -> None:
        """Watch until cancelled. Cancelling stops the watcher thread within about 50 ms."""
        stop = threading.Event()
        watcher = asyncio.ensure_future(self._watch(stop))
        try:
            # Shielded: awatch's thread only notices `stop`, so set it rather than cancel the thread's task.
            await asyncio.shield(watcher)
        finally:
            stop.set()
            if not watcher.done():
                await asyncio.wait({watcher}, timeout=2.0)
            if not watcher.done():
                watcher.cancel()
            elif not watcher.cancelled():
                watcher.exception()  # retrieved, so a failure during shutdown is not reported twice

    def recent_changes(self) -> tuple[str, ...]:
        """The paths (relative to the watched root) of the latest changes that counted, oldest first."""
        return tuple(self._recent)

    async def refresh(self) -> None:
        """Nothing to sample: changes are noted as they happen."""

    def reading(self, now: datetime) -> ActivityReading:
        if self._last_wall is None:
            return ActivityReading(source=self.name, clock=Clock.INTERACTION, at=None, detail=self._status)
        at = min(datetime.fromtimestamp(self._last_wall, UTC), now)
        verb = "last modified" if self._seeded else "changed"
        return ActivityReading(
            source=self.name,
            clock=Clock.INTERACTION,
            at=at,
            detail=f"file {self._last_path} {verb} at {format_time(at)}",
        )

    def _note(self, path: str, wall: float) -> None:
        if self._last_wall is None or wall >= self._last_wall:
            self._last_wall, self._last_path, self._seeded = wall, self._filter.relative(path), False

    async def _watch(self, stop: threading.Event) -> None:
        opts = self.options
        if opts.seed_from_mtime:
            await asyncio.to_thread(self._seed)
        polling = opts.force_polling
        while not stop.is_set():
            existing = [path for path in self.paths if path.exists()]
            missing = [path for path in self.paths if not path.exists()]
            if not existing:
                self._status = "no watched path exists yet: " + ", ".join(str(path) for path in missing)
                await asyncio.sleep(opts.retry_interval_s)
                continue
            self._status = self._no_change_yet
            try:
                async for changes in awatch(
                    *existing,
                    watch_filter=self._filter,
                    debounce=opts.debounce_ms,
                    stop_event=stop,
                    force_polling=polling,
                    poll_delay_ms=opts.poll_delay_ms,
                    rust_timeout=int(opts.retry_interval_s * 1000),
                    yield_on_timeout=True,
                    ignore_permission_denied=True,
                ):
                    self._take(path for _change, path in changes)
                    if missing and any(path.exists() for path in missing):
                        break  # a watched path appeared: watch it too
            except (OSError, RuntimeError) as exc:
                # inotify refuses trees above the kernel's watch limit; polling still works, if slower.
                logger.warning(
                    "file signal: watching failed (%s); polling every %d ms", exc, opts.poll_delay_ms
                )
                polling = True
                await asyncio.sleep(opts.retry_interval_s)

    def _take(self, paths: Iterable[str]) -> None:
        batch = sorted(set(paths))
        if not batch:
            return
        self._recent.extend(self._filter.relative(path) for path in batch)
        # The batch was debounced, so all of it happened just now; name the file written last.
        newest = max(batch, key=_mtime_or_zero)
        self._note(newest, time.time())

    def _seed(self) -> None:
        newest: tuple[float, str] | None = None
        seen = 0
        for root in self.paths:
            if not root.exists() or seen >= self.options.seed_max_files:
                continue
            if not root.is_dir():
                with contextlib.suppress(OSError):
                    mtime = os.lstat(root).st_mtime
                    if newest is None or mtime > newest[0]:
                        newest = (mtime, str(root))
                continue
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if self._filter.keeps(os.path.join(folder, d))]
                for name in files:
                    path = os.path.join(folder, name)
                    seen += 1
                    if not self._filter.keeps(path):
                        continue
                    with contextlib.suppress(OSError):
                        mtime = os.lstat(path).st_mtime
                        if newest is None or mtime > newest[0]:
                            newest = (mtime, path)
                if seen >= self.options.seed_max_files:
                    break
        if newest is not None and self._last_wall is None:
            self._last_wall, self._last_path, self._seeded = newest[0], self._filter.relative(newest[1]), True


def _mtime_or_zero(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0  # deleted: its deletion is the change
