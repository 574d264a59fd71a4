"""The file signal against a real workspace: edits count, noise does not."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

from lamplighter.model import ActivityReading, Clock
from lamplighter.signals.files import DEFAULT_FILE_IGNORE, FileSignal, FileSignalOptions
from tests.waiting import wait_until_async

UTC = timezone.utc
FAST = FileSignalOptions(debounce_ms=200, retry_interval_s=0.2)


def now() -> datetime:
    return datetime.now(UTC)


def write(path: Path, text: str) -> None:
    path.write_text(text)


@asynccontextmanager
async def running(sig: FileSignal) -> AsyncIterator[FileSignal]:
    task = asyncio.create_task(sig.run())
    try:
        yield sig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(
    sig: FileSignal, predicate: Callable[[ActivityReading], bool], *, touch: Path | None = None
) -> ActivityReading:
    """Poll until ``predicate`` holds; rewrite ``touch`` meanwhile, since the watcher may not be set up yet."""

    def met() -> ActivityReading | None:
        reading = sig.reading(now())
        if predicate(reading):
            return reading
        if touch is not None:
            write(touch, str(time.time()))
        return None

    return await wait_until_async(met, timeout_s=10, poll_s=0.1, what="the file signal's reading")


async def test_an_edit_is_interaction(tmp_path: Path) -> None:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    sig = FileSignal([tmp_path], FAST)
    first = sig.reading(now())
    assert first.at is None and first.clock is Clock.INTERACTION and first.source == "files"
    async with running(sig):
        before = time.time()
        reading = await until(sig, lambda r: r.at is not None, touch=notebooks / "analysis.py")
    assert reading.at is not None and before - 0.01 <= reading.at.timestamp() <= time.time()
    assert reading.detail.startswith("file notebooks/analysis.py changed at ")
    assert reading.detail.endswith(" UTC") and not reading.active_now


async def test_noise_and_the_journal_are_ignored(tmp_path: Path) -> None:
    noise = [
        ".git/objects/ab/cdef",
        "pkg/__pycache__/mod.cpython-311.pyc",
        "notebooks/.ipynb_checkpoints/analysis-checkpoint.ipynb",
        "node_modules/left-pad/index.js",
        ".cache/pip/wheel",
        "notes.txt.swp",
        "lamplighter.sqlite",
        "lamplighter.sqlite-wal",
        "data/raw/big.csv",
        "run.log",
    ]
    for rel in noise:  # the folders exist before watching starts: creating them is not the test
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    options = FileSignalOptions(debounce_ms=200, ignore=(*DEFAULT_FILE_IGNORE, "data/raw", "*.log"))
    sig = FileSignal([tmp_path], options, journal_path=tmp_path / "lamplighter.sqlite")
    async with running(sig):
        # Prove the watcher is live first, with a file that counts.
        await until(sig, lambda r: r.at is not None, touch=tmp_path / "ready.py")
        for rel in noise:
            (tmp_path / rel).write_text("noise")
        # Events arrive in order: once the sentinel written after the noise shows, the noise has gone by.
        sentinel = tmp_path / "notebooks" / "real.ipynb"
        sentinel.write_text("{}")
        reading = await until(sig, lambda r: "notebooks/real.ipynb" in r.detail)
    counted = sig.recent_changes()
    # ready.py is rewritten until the first event shows, so a late write of it may share the sentinel's
    # batch (a batch has no order): the sentinel is the last change counted apart from it.
    assert [c for c in counted if c != "ready.py"][-1] == "notebooks/real.ipynb", counted
    assert not set(noise) & set(counted), counted
    assert reading.detail.startswith("file notebooks/real.ipynb changed at")


async def test_a_seed_gives_the_newest_file_on_disk(tmp_path: Path) -> None:
    old, older = tmp_path / "old.py", tmp_path / "sub" / "older.py"
    older.parent.mkdir()
    for path, age_s in ((old, 3600), (older, 7200)):
        path.write_text("x")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_text("newer, but noise")
    sig = FileSignal([tmp_path], FileSignalOptions(seed_from_mtime=True, retry_interval_s=0.2))
    async with running(sig):
        reading = await until(sig, lambda r: r.at is not None)
    assert reading.at is not None and abs(reading.at.timestamp() - old.stat().st_mtime) < 0.001
    assert reading.detail.startswith("file old.py last modified at ")


async def test_a_path_that_appears_later_is_watched(tmp_path: Path) -> None:
    later = tmp_path / "later"
    sig = FileSignal([later], FAST)
    async with running(sig):
        await until(sig, lambda r: "no watched path exists yet" in r.detail)
        later.mkdir()
        reading = await until(sig, lambda r: r.at is not None, touch=later / "new.py")
    assert reading.detail.startswith("file new.py changed at ")


async def test_cancelling_stops_the_watcher_promptly(tmp_path: Path) -> None:
    sig = FileSignal([tmp_path], FileSignalOptions(retry_interval_s=5.0))
    task = asyncio.create_task(sig.run())
    await until(sig, lambda r: r.at is not None, touch=tmp_path / "a.py")
    started = time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert time.monotonic() - started < 1.0
