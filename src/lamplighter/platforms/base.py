"""The narrow interfaces every platform implements: a probe that observes a server, and a stopper.

A target is a probe plus a stopper. A plain Jupyter server is probed and stopped through its own
API; a SageMaker Studio app is probed through the same Jupyter API but stopped with ``DeleteApp``;
a Code Editor app is probed through files and processes. The agent only sees these protocols.
"""

from __future__ import annotations

from typing import Protocol

from lamplighter.model import Decision, ServerSnapshot, StopResult

__all__ = ["Probe", "Stopper"]


class Probe(Protocol):
    """Observes one server without creating activity, and culls parts of it."""

    @property
    def target(self) -> str:
        """A display name for the server: safe to log (no token, no presigned URL)."""
        ...

    async def snapshot(self) -> ServerSnapshot:
        """Read the server's state now; raises a ``RemoteError`` when it cannot."""
        ...

    async def cull_kernel(self, kernel_id: str) -> None:
        """Shut one kernel down; a kernel that is already gone counts as done."""
        ...

    async def cull_terminal(self, name: str) -> None:
        """Close one terminal; a terminal that is already gone counts as done."""
        ...


class Stopper(Protocol):
    """Stops the whole app, idempotently, and verifies that it stopped."""

    @property
    def description(self) -> str:
        """What stopping means here, for logs (``POST /api/shutdown``, ``DeleteApp d-1/JupyterLab/default``)."""
        ...

    async def stop(self, decision: Decision) -> StopResult:
        """Stop the app because of ``decision``; never raises for an expected failure, returns FAILED."""
        ...
