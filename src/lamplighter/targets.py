"""Builds the target the settings describe: its probe, stopper, signals and notifier.

The one place that maps ``--app-type``, ``--platform`` and the signal settings onto implementations,
shared by ``watch``, ``status`` and the demo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from urllib.parse import urlsplit

from lamplighter.actions import build_stopper
from lamplighter.errors import ConfigError
from lamplighter.notices import Notifier
from lamplighter.platforms.base import Probe, Stopper
from lamplighter.platforms.jupyter import JupyterServer
from lamplighter.remote.connection import Connection, connection_from_settings
from lamplighter.settings import Settings
from lamplighter.signals import Signal
from lamplighter.signals.keepalive import KeepAliveFile

__all__ = ["Target", "build_signals", "local_port", "open_target"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


@dataclass(frozen=True)
class Target:
    """One app to watch: how to observe it, how to stop it, and which extra signals to read."""

    probe: Probe
    stopper: Stopper
    conn: Connection | None = None
    signals: tuple[Signal, ...] = ()
    notifier: Notifier | None = None


def local_port(settings: Settings) -> int | None:
    """The port of the watched server when it runs on this machine (its process tree is then ours to read)."""
    if settings.app_type == "code-editor":
        return settings.editor_port
    parts = urlsplit(settings.url or "")
    if parts.hostname not in _LOOPBACK:
        return None
    return parts.port or (443 if parts.scheme == "https" else 80)


def build_signals(settings: Settings, *, server_pid: int | None = None) -> tuple[Signal, ...]:
    """The signals the settings turn on; the keep-alive file is always read (one stat per check).

    ``server_pid`` names the server when the caller knows it (in-server mode: our own pid); otherwise
    it is ``--server-pid``, or the process listening on the URL's port.
    """
    signals: list[Signal] = [KeepAliveFile(settings.keep_alive_file)]
    tree_pids = None
    pid = server_pid or settings.server_pid
    port = None if pid else local_port(settings)
    interval_s = settings.effective_process_sample_interval.total_seconds()
    window_s = settings.effective_process_window.total_seconds()
    if settings.process_signal and (pid or port):
        from lamplighter.signals.processes import DEFAULT_PROCESS_IGNORE, ProcessSignal, ProcessSignalOptions

        process = ProcessSignal(
            pid,
            ProcessSignalOptions(
                sample_interval_s=interval_s,
                window_s=window_s,
                cpu_threshold=settings.cpu_threshold,
                scope=settings.effective_process_scope,
                ignore=DEFAULT_PROCESS_IGNORE + settings.process_ignore,
            ),
            port=port,
        )
        signals.append(process)
        tree_pids = process.tree_pids
    if settings.gpu_signal:
        from lamplighter.signals.gpu import GpuSignal, GpuSignalOptions

        options = GpuSignalOptions(
            sample_interval_s=interval_s, window_s=window_s, gpu_threshold=settings.gpu_threshold
        )
        signals.append(GpuSignal(options, pids=tree_pids))
    if settings.watch_paths:
        from lamplighter.signals.files import DEFAULT_FILE_IGNORE, FileSignal, FileSignalOptions

        file_options = FileSignalOptions(ignore=DEFAULT_FILE_IGNORE + settings.watch_ignore)
        signals.append(FileSignal(settings.watch_paths, file_options, journal_path=settings.journal))
    return tuple(signals)


def _resolve_sagemaker(settings: Settings) -> Settings:
    """On SageMaker the app type, and so the server's local URL, follow from the metadata file."""
    if settings.platform != "sagemaker":
        return settings
    from lamplighter.sagemaker.identity import AppIdentity, jupyter_base_url

    identity = AppIdentity.from_metadata(settings.sagemaker_metadata)
    if identity.app_type == "CodeEditor":
        return replace(settings, app_type="code-editor", editor_port=settings.editor_port or 8888)
    if settings.url:
        return settings
    return replace(settings, url=f"http://127.0.0.1:8888{jupyter_base_url(identity.app_type)}")


@asynccontextmanager
async def open_target(settings: Settings) -> AsyncIterator[Target]:
    settings = _resolve_sagemaker(settings)
    notifier = None
    if settings.warn_before is not None:
        notifier = Notifier(settings, settings.url or "code-editor", server_port=local_port(settings))
    async with AsyncExitStack() as stack:
        if settings.app_type == "code-editor":
            from lamplighter.platforms.codeeditor import CodeEditorOptions, CodeEditorProbe

            if settings.action == "shutdown" and settings.platform == "jupyter" and not settings.editor_port:
                raise ConfigError(
                    "editor_port: stopping a plain code-server needs --editor-port (or --action command)"
                )
            probe: Probe = CodeEditorProbe(
                CodeEditorOptions(healthz_url=settings.code_server_healthz, server_port=settings.editor_port),
                agent_started=datetime.now(timezone.utc),
                target=f"code-editor:{settings.editor_port or 'sagemaker'}",
            )
            yield Target(
                probe, build_stopper(settings, None, probe.target), None, build_signals(settings), notifier
            )
            return
        conn = await stack.enter_async_context(connection_from_settings(settings))
        yield Target(
            JupyterServer(conn),
            build_stopper(settings, conn, conn.display_url),
            conn,
            build_signals(settings),
            notifier,
        )
