"""An in-memory target for tests of the agent: a probe that returns what it is told and a stopper that records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lamplighter.errors import ConnectFailed
from lamplighter.model import Decision, ServerSnapshot, StopOutcome, StopResult

__all__ = ["FakeServer"]


@dataclass
class FakeServer:
    """Probe and stopper in one. ``snapshot_fn`` builds each snapshot; ``up`` False makes probes fail."""

    snapshot_fn: Callable[[], ServerSnapshot]
    up: bool = True
    stop_outcome: StopOutcome = StopOutcome.STOPPED
    stops: list[Decision] = field(default_factory=list)
    culled_kernels: list[str] = field(default_factory=list)
    culled_terminals: list[str] = field(default_factory=list)
    probes: int = 0

    @property
    def target(self) -> str:
        return "fake://server/"

    @property
    def description(self) -> str:
        return "fake stop"

    async def snapshot(self) -> ServerSnapshot:
        self.probes += 1
        if not self.up:
            raise ConnectFailed("fake://server/: cannot connect (refused)")
        return self.snapshot_fn()

    async def cull_kernel(self, kernel_id: str) -> None:
        self.culled_kernels.append(kernel_id)

    async def cull_terminal(self, name: str) -> None:
        self.culled_terminals.append(name)

    async def stop(self, decision: Decision) -> StopResult:
        self.stops.append(decision)
        if self.stop_outcome is StopOutcome.STOPPED:
            self.up = False
        return StopResult(self.stop_outcome, "fake")
