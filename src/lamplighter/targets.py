"""Builds the target the settings describe: its connection, probe, stopper and signals.

The one place that maps ``--platform`` onto implementations, shared by ``watch``, ``status`` and the
server extension.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from lamplighter.actions import build_stopper
from lamplighter.notices import Notifier
from lamplighter.platforms.base import Probe, Stopper
from lamplighter.platforms.jupyter import JupyterServer
from lamplighter.remote.connection import Connection, connection_from_settings
from lamplighter.settings import Settings
from lamplighter.signals import Signal
from lamplighter.signals.keepalive import KeepAliveFile

__all__ = ["Target", "build_signals", "open_target"]


@dataclass(frozen=True)
class Target:
    """One app to watch: how to observe it, how to stop it, and which extra signals to read."""

    conn: Connection
    probe: Probe
    stopper: Stopper
    signals: tuple[Signal, ...] = ()
    notifier: Notifier | None = None


def _resolve_url(settings: Settings) -> Settings:
    """On SageMaker the server's local URL follows from the app type in the metadata file."""
    if settings.url or settings.platform != "sagemaker":
        return settings
    from lamplighter.platforms.sagemaker import local_jupyter_url

    return replace(settings, url=local_jupyter_url(settings))


def build_signals(settings: Settings) -> tuple[Signal, ...]:
    """The extra signals the settings turn on; the keep-alive file is always read (one stat per check)."""
    signals: list[Signal] = [KeepAliveFile(settings.keep_alive_file)]
    return tuple(signals)


@asynccontextmanager
async def open_target(settings: Settings) -> AsyncIterator[Target]:
    settings = _resolve_url(settings)
    async with connection_from_settings(settings) as conn:
        yield Target(
            conn=conn,
            probe=JupyterServer(conn),
            stopper=build_stopper(settings, conn),
            signals=build_signals(settings),
            notifier=Notifier(settings, conn.display_url) if settings.warn_before is not None else None,
        )
