"""What the hub service adds to the fleet's agents, as one narrow interface (:class:`FleetHooks`).

:class:`~lamplighter.hub.fleet.HubFleet` builds one agent per server; a :class:`FleetHooks` (the
reports and views of :mod:`lamplighter.hub.service`) may put its own probe in front of the direct one,
wrap what the agent is built with (metrics), and learn when an agent starts and ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lamplighter.agent import Agent
    from lamplighter.model import Decision
    from lamplighter.platforms.base import Probe
    from lamplighter.platforms.jupyterhub import HubServer
    from lamplighter.signals import Signal

__all__ = ["FleetHooks"]


class FleetHooks(Protocol):
    def probe_for(self, server: HubServer, target: str, direct: Probe) -> Probe:
        """The probe the hub's probe wraps (default: ``direct``, the server's own address)."""
        ...

    def instrument(
        self, server: HubServer, target: str, probe: Probe
    ) -> tuple[Probe, tuple[Signal, ...], Callable[[Decision], None]]:
        """What the agent is built with: its probe, its signals, one more ``on_decision``."""
        ...

    def watching(self, server: HubServer, target: str, agent: Agent) -> None: ...

    def ended(self, server: HubServer, target: str) -> None: ...
