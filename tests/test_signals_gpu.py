"""The GPU signal against a fake NVML at the library boundary (no GPU on these machines)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from lamplighter.model import ActivityReading, Clock
from lamplighter.signals.gpu import GpuSignal, GpuSignalOptions
from tests.waiting import wait_until_async

UTC = timezone.utc
FAST = GpuSignalOptions(sample_interval_s=0.05, window_s=0.6)

_MESSAGES = {3: "Not Supported", 6: "Not Found", 12: "NVML Shared Library Not Found", 15: "GPU is lost"}


class FakeNVMLError(Exception):
    """Shaped like pynvml.NVMLError: a ``value`` code and pynvml's message text."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML error {self.value}")


class FakeNvml:
    """The slice of the ``pynvml`` module the signal calls, with knobs for each test."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.init_error: int | None = None
        self.fail_with: int | None = None  # every device call raises this code while set
        self.per_process = True
        self.device_util = dict.fromkeys(range(devices), 0)
        self.processes: dict[int, dict[int, int | None]] = {i: {} for i in range(devices)}  # pid -> memory
        self.process_util: dict[int, dict[int, int]] = {i: {} for i in range(devices)}  # pid -> SM %
        self.calls: list[str] = []
        self.failed_calls = 0

    def _check(self) -> None:
        if self.fail_with is not None:
            self.failed_calls += 1
            raise FakeNVMLError(self.fail_with)

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake H100"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        self._check()
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in self.processes[handle].items()]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        self._check()
        return SimpleNamespace(gpu=self.device_util[handle], memory=0)

    def nvmlDeviceGetProcessUtilization(self, handle: int, since_us: int) -> list[Any]:
        self._check()
        if not self.per_process:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        busy = self.process_util[handle]
        if not busy:
            raise FakeNVMLError(self.NVML_ERROR_NOT_FOUND)
        stamp = int(time.time() * 1e6)
        return [
            SimpleNamespace(pid=pid, timeStamp=stamp, smUtil=util, memUtil=0, encUtil=0, decUtil=0)
            for pid, util in busy.items()
        ]


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A real process to stand for the app's training job (the signal names it by its command line)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # train.py"])
    yield process.pid
    process.kill()
    process.wait(10)


async def until(
    sig: GpuSignal, predicate: Callable[[ActivityReading], bool], timeout_s: float = 5.0
) -> ActivityReading:
    def met() -> ActivityReading | None:
        reading = sig.reading(now())
        return reading if predicate(reading) else None

    return await wait_until_async(met, timeout_s=timeout_s, poll_s=0.02, what="the GPU signal's reading")


async def run_until(sig: GpuSignal, predicate: Callable[[ActivityReading], bool]) -> ActivityReading:
    task = asyncio.create_task(sig.run())
    try:
        return await until(sig, predicate)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_busy_process_of_the_tree_is_work(sleeper: int) -> None:
    nvml = FakeNvml()
    nvml.processes[0] = {sleeper: 12 * 1024**3, 1: 1024**3}
    nvml.process_util[0] = {sleeper: 87, 1: 50}
    sig = GpuSignal(FAST, pids=lambda: {sleeper}, nvml=nvml)
    reading = await run_until(sig, lambda r: r.active_now)
    assert reading.clock is Clock.WORK and reading.source == "gpu"
    assert reading.detail.startswith(
        f"pid {sleeper} `{os.path.basename(sys.executable)} -c import time; time.sleep(60) # train.py` on GPU 0 used 87 %"
    )
    assert "holding 12.0 GiB" in reading.detail
    assert nvml.calls == ["init", "shutdown"]


def test_an_idle_gpu_and_other_peoples_work_do_not_count(sleeper: int) -> None:
    nvml = FakeNvml()
    nvml.processes[0] = {sleeper: 1024**3, 1: 1024**3}
    nvml.process_util[0] = {1: 95}  # pid 1 is busy on the GPU, but it is not in the app's tree
    nvml.device_util[0] = 95
    sig = GpuSignal(FAST, pids=lambda: {sleeper}, nvml=nvml)
    sig.sample()
    for _ in range(15):
        time.sleep(0.05)
        sig.sample()
        assert not sig.reading(now()).active_now
    reading = sig.reading(now())
    assert reading.at is None
    assert reading.detail == "no GPU use of 5 % for 0.1 s of the last 0.6 s on 1 GPU(s)"


async def test_without_per_process_figures_the_device_counts_for_the_tree(sleeper: int) -> None:
    nvml = FakeNvml()
    nvml.per_process = False
    nvml.processes[0] = {sleeper: None}
    nvml.device_util[0] = 40
    sig = GpuSignal(FAST, pids=lambda: {sleeper}, nvml=nvml)
    reading = await run_until(sig, lambda r: r.active_now)
    assert reading.detail.startswith(f"pid {sleeper} `python") and "used 40 % of a GPU" in reading.detail


async def test_pids_from_another_namespace_count_the_whole_device() -> None:
    nvml = FakeNvml()
    nvml.processes[0] = {4_000_000: 1024**3}  # a host pid, invisible inside this "container"
    nvml.process_util[0] = {4_000_000: 70}
    nvml.device_util[0] = 70
    sig = GpuSignal(FAST, pids=lambda: {os.getpid()}, nvml=nvml)
    reading = await run_until(sig, lambda r: r.active_now)
    assert reading.detail.startswith("GPU 0 (Fake H100) used 70 % of a GPU over the last")


async def test_device_mode_counts_any_use() -> None:
    nvml = FakeNvml(devices=2)
    nvml.device_util[1] = 30
    sig = GpuSignal(FAST, nvml=nvml)
    reading = await run_until(sig, lambda r: r.active_now)
    assert reading.detail.startswith("GPU 1 (Fake H100) used 30 % of a GPU")


async def test_library_missing_is_reported_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml()
    nvml.init_error = 12
    sig = GpuSignal(FAST, nvml=nvml)
    with caplog.at_level(logging.INFO, logger="lamplighter.signals.gpu"):
        await asyncio.wait_for(sig.run(), timeout=2)  # returns: nothing to sample
        sig.sample()
    expected = "GPU signal unavailable: NVML Shared Library Not Found"
    assert sig.reading(now()) == ActivityReading(source="gpu", clock=Clock.WORK, at=None, detail=expected)
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert nvml.calls == ["init"]


async def test_without_nvidia_ml_py_the_signal_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    sig = GpuSignal(FAST)
    await asyncio.wait_for(sig.run(), timeout=2)
    reading = sig.reading(now())
    assert reading.at is None and reading.detail.startswith(
        "GPU signal unavailable: nvidia-ml-py is not installed"
    )


async def test_the_real_library_without_a_driver_is_unavailable() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    sig = GpuSignal(FAST)
    await asyncio.wait_for(sig.run(), timeout=5)
    assert sig.unavailable is not None and sig.reading(now()).detail.startswith("GPU signal unavailable: ")


async def test_a_driver_error_mid_run_keeps_the_last_use_and_recovers(
    sleeper: int, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml()
    nvml.processes[0] = {sleeper: 1024**3}
    nvml.process_util[0] = {sleeper: 90}
    sig = GpuSignal(FAST, pids=lambda: {sleeper}, nvml=nvml)
    task = asyncio.create_task(sig.run())
    try:
        await until(sig, lambda r: r.active_now)
        with caplog.at_level(logging.INFO, logger="lamplighter.signals.gpu"):
            nvml.fail_with = 15
            failed_at = time.time()
            reading = await until(sig, lambda r: not r.active_now)
            assert reading.at is not None and failed_at - 0.5 <= reading.at.timestamp() <= failed_at + 0.2
            assert "GPU signal failing since" in reading.detail and "GPU is lost" in reading.detail
            assert f"before that pid {sleeper}" in reading.detail
            # Several failed samples go by; the failure is logged once.
            await wait_until_async(lambda: nvml.failed_calls >= 4, timeout_s=5, what="4 failed NVML calls")
            nvml.fail_with = None
            await until(sig, lambda r: r.active_now)
        messages = [r.getMessage() for r in caplog.records]
        assert [m for m in messages if "NVML failed" in m] == [
            "GPU signal: NVML failed (GPU is lost); retrying every 0.05 s"
        ]
        assert "GPU signal: NVML works again" in messages
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert nvml.calls[-1] == "shutdown"
