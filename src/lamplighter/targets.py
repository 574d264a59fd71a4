"""Builds the target the settings describe: its connection, probe, stopper and signals.

The one place that maps ``--platform`` onto implementations, shared by ``watch``, ``status`` and the
server extension.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from lamplighter.actions import build_stopper
from lamplighter.platforms.base import Probe, Stopper
from lamplighter.platforms.jupyter import JupyterServer
from lamplighter.remote.connection import Connection, connection_from_settings
from lamplighter.settings import Settings
from lamplighter.signals import Signal

__all__ = ["Target", "open_target"]


@dataclass(frozen=True)
class Target:
    """One app to watch: how to observe it, how to stop it, and which extra signals to read."""

    conn: Connection
    probe: Probe
    stopper: Stopper
    signals: tuple[Signal, ...] = ()


def _resolve_url(settings: Settings) -> Settings:
    """On SageMaker the server's local URL follows from the app type in the metadata file."""
    if settings.url or settings.platform != "sagemaker":
        return settings
    from lamplighter.platforms.sagemaker import local_jupyter_url

    return replace(settings, url=local_jupyter_url(settings))


@asynccontextmanager
async def open_target(settings: Settings) -> AsyncIterator[Target]:
    settings = _resolve_url(settings)
    async with connection_from_settings(settings) as conn:
        yield Target(conn=conn, probe=JupyterServer(conn), stopper=build_stopper(settings, conn))
