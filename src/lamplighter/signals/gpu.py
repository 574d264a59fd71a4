"""The GPU signal: GPU use by the app's processes (or of its whole GPUs) feeds the *work* clock.

A training run can sit at 2 % CPU while its GPU is saturated, so the process signal alone misses it.
This signal asks NVML (``nvidia-ml-py``, the ``gpu`` extra, imported lazily as ``pynvml``) every
``sample_interval_s``:

- per process, where the driver supports it: ``nvmlDeviceGetProcessUtilization`` (SM use per pid
  since the previous sample) for the pids of the app's process tree (``pids``, usually
  :meth:`~lamplighter.signals.processes.ProcessSignal.tree_pids`);
- per device otherwise: ``nvmlDeviceGetUtilizationRates``, counted when a process of the tree holds a
  context on that device (``nvmlDeviceGetComputeRunningProcesses``), or always when no ``pids`` are
  given or ``per_process`` is off;
- inside a container with its own pid namespace NVML reports host pids, which do not exist here:
  then the whole device counts (the GPU was given to this container) and the reason says so.

Sustained use of at least ``gpu_threshold`` of a device (see :class:`~lamplighter.signals.BusyWindow`)
is work. Without the library, the driver or a GPU, the signal reports ``GPU signal unavailable: ...``
once, logs it once at info and stops sampling; it never raises. An NVML error later on (a lost GPU)
is logged once, keeps the last time GPU use was seen, and sampling goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psutil

from lamplighter.errors import ConfigError
from lamplighter.model import ActivityReading, Clock, format_time
from lamplighter.processinfo import describe_process
from lamplighter.signals import BusyWindowOptions, UsageSummary, format_seconds, format_share, sample_every

__all__ = ["GpuSignal", "GpuSignalOptions"]

logger = logging.getLogger(__name__)

UTC = timezone.utc
_GIB = 1024**3


@dataclass(frozen=True)
class GpuSignalOptions(BusyWindowOptions):
    """Tuning of the GPU signal: the busy window's cadence (:class:`BusyWindowOptions`) and what counts."""

    gpu_threshold: float = 0.05
    """Share of one device (0.05 = 5 %) the app must use for a sample to be busy."""
    per_process: bool = True
    """Count only GPU use by the app's processes where NVML can tell; False: any use of a device counts."""

    def __post_init__(self) -> None:
        self._check_window("GPU signal")
        if self.gpu_threshold <= 0:
            raise ConfigError(f"GPU signal: gpu_threshold must be positive, got {self.gpu_threshold:g}")


@dataclass
class _Device:
    index: int
    handle: Any
    name: str
    per_process_util: bool = True  # False once the driver said NOT_SUPPORTED
    last_seen_us: int = 0  # NVML's per-process samples newer than this are new to us
    foreign_pids_logged: bool = False


@dataclass
class _GpuMeasured:
    mono: float
    wall: float
    usage: dict[str, float]  # label -> share of a device during the sample
    memory: dict[str, int] = field(default_factory=dict)  # label -> bytes, where NVML says


class GpuSignal:
    """Samples GPU use through NVML; sustained use is work (see the module docstring).

    ``pids`` returns the pids of the app's process tree (None: every process on the GPUs counts).
    ``nvml`` replaces the ``pynvml`` module, for tests; by default it is imported when ``run`` starts.
    """

    name = "gpu"

    def __init__(
        self,
        options: GpuSignalOptions | None = None,
        *,
        pids: Callable[[], Collection[int]] | None = None,
        nvml: Any = None,
    ) -> None:
        self.options = options or GpuSignalOptions()
        self._pids = pids
        self._nvml = nvml
        self._devices: list[_Device] = []
        self._window = self.options.busy_window(self.options.gpu_threshold)
        self._prev_mono: float | None = None
        self._unavailable: str | None = None
        self._failing: tuple[float, str] | None = None  # since (wall), error text
        self._memory: dict[str, int] = {}
        self._labels: dict[int, str] = {}
        self._status = "GPU signal starting"
        self._created_wall = time.time()
        self._lock = asyncio.Lock()  # one NVML sample at a time: run() and refresh() share the devices

    @property
    def unavailable(self) -> str | None:
        """Why the signal cannot work here (no library, driver or GPU), or None."""
        return self._unavailable

    async def run(self) -> None:
        """Start NVML, then sample every ``sample_interval_s`` until cancelled; returns if unavailable."""
        if not await asyncio.to_thread(self._start):
            return
        try:
            await sample_every(self.options.sample_interval_s, self._sample_async)
        finally:
            self._stop()

    async def refresh(self) -> None:
        """Sample now unless the latest sample is fresh (a quarter interval), so a stop sees a job just begun."""
        if not self._devices or self.options.is_fresh(self._window.last_sample_wall):
            return
        await self._sample_async()

    async def _sample_async(self) -> None:
        async with self._lock:
            try:
                measured = await asyncio.to_thread(self._measure)
            except Exception as exc:
                self._note_failure(exc)
            else:
                self._record(measured)

    def _ready_at(self, now: datetime) -> datetime | None:
        """When the window can tell busy from idle; None if it can now, or never will (unavailable, failing)."""
        if self._unavailable is not None or self._failing is not None:
            return None
        if self._window.last_sample_wall is None:
            if now.timestamp() - self._created_wall > max(3 * self.options.sample_interval_s, 5.0):
                return None  # NVML never answered: its reading says so; not waited for forever
            return now + timedelta(seconds=self.options.sample_interval_s)
        ready = self._window.ready_at()
        return datetime.fromtimestamp(ready, UTC) if ready is not None else None

    def sample(self) -> None:
        """Take one sample now, blocking; starts NVML on first use. For tests and benchmarks."""
        if not self._devices and self._unavailable is None:
            self._start()
        if self._devices:
            try:
                measured = self._measure()
            except Exception as exc:
                self._note_failure(exc)
            else:
                self._record(measured)

    def reading(self, now: datetime) -> ActivityReading:
        window = self._window
        if self._unavailable is not None:
            return ActivityReading(source=self.name, clock=Clock.WORK, at=None, detail=self._unavailable)
        if window.active and self._failing is None and window.last_busy_summary is not None:
            return ActivityReading(
                source=self.name,
                clock=Clock.WORK,
                at=now,
                detail=self._describe_busy(window.last_busy_summary),
                active_now=True,
            )
        at = datetime.fromtimestamp(window.last_busy_wall, UTC) if window.last_busy_wall is not None else None
        parts: list[str] = []
        if self._failing is not None:
            since, error = self._failing
            parts.append(
                f"GPU signal failing since {format_time(datetime.fromtimestamp(since, UTC))}: {error}"
            )
        if at is not None and window.last_busy_summary is not None:
            before = self._describe_busy(window.last_busy_summary)
            parts.append(f"no GPU use since {format_time(at)}; before that {before}")
        elif self._failing is None:
            parts.append(self._status)
        ready_at = self._ready_at(now)
        if ready_at is not None:
            parts.insert(0, f"waiting for the GPU signal's window (until {format_time(ready_at)})")
        return ActivityReading(
            source=self.name,
            clock=Clock.WORK,
            at=min(at, now) if at else None,
            detail="; ".join(parts),
            ready_at=ready_at,
        )

    # -- NVML ---------------------------------------------------------------------------------

    def _start(self) -> bool:
        """Load NVML and list the GPUs; on failure remember why, log it once, and return False."""
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                return self._give_up("nvidia-ml-py is not installed (pip install 'lamplighter[gpu]')")
            nvml = self._nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return self._give_up(str(exc))
        try:
            count = int(nvml.nvmlDeviceGetCount())
            devices = []
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                devices.append(
                    _Device(
                        index=index,
                        handle=handle,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                    )
                )
        except nvml.NVMLError as exc:
            self._stop()
            return self._give_up(str(exc))
        if not devices:
            self._stop()
            return self._give_up("no NVIDIA GPU found")
        self._devices = devices
        names = ", ".join(f"{device.index}: {device.name}" for device in devices)
        logger.info("GPU signal: watching %d GPU(s) (%s)", len(devices), names)
        self._status = (
            f"no GPU use of {format_share(self.options.gpu_threshold)} for "
            f"{format_seconds(self.options.effective_min_busy_s)} of the last "
            f"{format_seconds(self.options.window_s)} on {len(devices)} GPU(s)"
        )
        return True

    def _give_up(self, why: str) -> bool:
        self._unavailable = f"GPU signal unavailable: {why}"
        logger.info("%s", self._unavailable)
        return False

    def _stop(self) -> None:
        if self._nvml is None:
            return
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            logger.debug("GPU signal: nvmlShutdown failed: %s", exc)

    def _note_failure(self, exc: Exception) -> None:
        """Remember a failed sample; logged once per streak of failures, never raised."""
        if self._failing is None:
            interval = self.options.sample_interval_s
            if isinstance(exc, self._nvml.NVMLError):
                logger.warning("GPU signal: NVML failed (%s); retrying every %g s", exc, interval)
            else:
                logger.exception("GPU signal: a sample failed; retrying every %g s", interval)
            self._failing = (time.time(), str(exc) or type(exc).__name__)
        self._prev_mono = None  # the next good sample starts a fresh interval

    def _record(self, measured: _GpuMeasured) -> None:
        if self._failing is not None:
            logger.info("GPU signal: NVML works again")
            self._failing = None
        dt = (
            measured.mono - self._prev_mono if self._prev_mono is not None else self.options.sample_interval_s
        )
        self._prev_mono = measured.mono
        self._memory = measured.memory
        usage = {label: share * dt for label, share in measured.usage.items()}
        self._window.add(mono=measured.mono, wall=measured.wall, dt=dt, usage=usage)

    def _measure(self) -> _GpuMeasured:
        tree = set(self._pids()) if self._pids is not None and self.options.per_process else None
        usage: dict[str, float] = {}
        memory: dict[str, int] = {}
        for device in self._devices:
            procs = {int(proc.pid): getattr(proc, "usedGpuMemory", None) for proc in self._running(device)}
            device_label = f"GPU {device.index} ({device.name})"
            if tree is not None and procs and not any(psutil.pid_exists(pid) for pid in procs):
                if not device.foreign_pids_logged:
                    device.foreign_pids_logged = True
                    logger.info(
                        "GPU signal: the pids NVML reports on GPU %d are not visible here (another pid "
                        "namespace); counting the whole device",
                        device.index,
                    )
                mine: set[int] | None = None
            else:
                mine = None if tree is None else tree & set(procs)
            if mine is None:
                share = self._device_util(device)
                if share > 0:
                    usage[device_label] = usage.get(device_label, 0.0) + share
                continue
            per_pid = self._process_util(device) if mine else {}
            for pid in sorted(mine):
                label = f"pid {pid} `{self._label(pid)}` on GPU {device.index}"
                if per_pid is None:  # no per-process figures: the device's use goes to the tree's process
                    share = self._device_util(device) if pid == min(mine) else 0.0
                else:
                    share = per_pid.get(pid, 0.0)
                if share > 0:
                    usage[label] = usage.get(label, 0.0) + share
                used_bytes = procs.get(pid)
                if isinstance(used_bytes, int) and used_bytes > 0:
                    memory[label] = used_bytes
        return _GpuMeasured(mono=time.monotonic(), wall=time.time(), usage=usage, memory=memory)

    def _running(self, device: _Device) -> list[Any]:
        nvml = self._nvml
        try:
            return list(nvml.nvmlDeviceGetComputeRunningProcesses(device.handle))
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED:
                return []
            raise

    def _device_util(self, device: _Device) -> float:
        return float(self._nvml.nvmlDeviceGetUtilizationRates(device.handle).gpu) / 100.0

    def _process_util(self, device: _Device) -> dict[int, float] | None:
        """Mean SM share per pid over NVML's samples since the previous call; None if unsupported."""
        if not device.per_process_util:
            return None
        nvml = self._nvml
        since = device.last_seen_us or int((time.time() - self.options.sample_interval_s) * 1e6)
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(device.handle, since)
        except nvml.NVMLError as exc:
            value = getattr(exc, "value", None)
            if value == nvml.NVML_ERROR_NOT_FOUND:
                return {}  # no process used this GPU since `since`
            if value == nvml.NVML_ERROR_NOT_SUPPORTED:
                device.per_process_util = False
                logger.info("GPU signal: GPU %d has no per-process figures; using device use", device.index)
                return None
            raise
        sums: dict[int, list[float]] = {}
        for sample in samples:
            sums.setdefault(int(sample.pid), []).append(float(sample.smUtil) / 100.0)
            device.last_seen_us = max(device.last_seen_us, int(sample.timeStamp))
        return {pid: sum(values) / len(values) for pid, values in sums.items()}

    def _label(self, pid: int) -> str:
        label = self._labels.get(pid)
        if label is None:
            try:
                proc = psutil.Process(pid)
                label = describe_process(proc.cmdline(), proc.name())
            except psutil.Error:
                label = "?"
            if len(self._labels) > 256:
                self._labels.clear()
            self._labels[pid] = label
        return label

    def _describe_busy(self, summary: UsageSummary) -> str:
        text = (
            f"{summary.top_label} used {format_share(summary.top_share)} of a GPU "
            f"over the last {format_seconds(summary.span_s)}"
        )
        used_bytes = self._memory.get(summary.top_label)
        if used_bytes:
            text += f", holding {used_bytes / _GIB:.1f} GiB"
        if summary.users > 1:
            text += f" ({format_share(summary.total_share)} in all across {summary.users})"
        return text
