"""The one wiring table: which probe, stopper and signals watch the app the settings describe.

Every mode builds its target here — ``watch``, ``status``, the demo and the in-server extension. A
row of :data:`ROWS` maps a ``--platform`` and ``--app-type`` to how that app is observed (its probe)
and how it stops itself (the platform's own stopper); ``--action`` may replace that stopper with a
command, nothing, or a dry run. Adding a platform is one module under :mod:`lamplighter.platforms`
and one row here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from lamplighter.errors import ConfigError
from lamplighter.notices import Notifier
from lamplighter.platforms.base import Probe, Stopper
from lamplighter.remote.connection import Connection, connection_from_settings
from lamplighter.server_url import LOOPBACK_HOSTS
from lamplighter.settings import Settings
from lamplighter.signals import Signal
from lamplighter.signals.keepalive import KeepAliveFile
from lamplighter.stoppers import CommandStopper, DryRun, NoStop, ProcessStopper

if TYPE_CHECKING:
    from lamplighter.journal import Journal
    from lamplighter.sagemaker.notebook_instance import NotebookInstanceIdentity

__all__ = [
    "ROWS",
    "Companion",
    "Row",
    "Target",
    "build_signals",
    "build_stopper",
    "companion_running",
    "local_port",
    "open_target",
    "row_for",
]


@dataclass(frozen=True)
class Target:
    """One app to watch: how to observe it, how to stop it, and which extra signals to read."""

    probe: Probe
    stopper: Stopper
    conn: Connection | None = None
    signals: tuple[Signal, ...] = ()
    notifier: Notifier | None = None
    companion: Companion | None = None
    """Runs beside the agent for as long as it watches (Studio Classic: culls the KernelGateway apps)."""


class Companion(Protocol):
    """A loop beside the agent that shares its journal (:class:`~lamplighter.platforms.studio_classic.ClassicCuller`)."""

    def wake(self) -> None: ...

    async def check(self, journal: Journal) -> object:
        """One pass (``watch --once``)."""
        ...

    async def run(self, journal: Journal) -> None: ...


@asynccontextmanager
async def companion_running(
    companion: Companion | None, journal: Journal, *, once: bool = False
) -> AsyncIterator[None]:
    """The companion's loop runs while the block does (once: one pass first, then no loop)."""
    if companion is None:
        yield
        return
    if once:
        await companion.check(journal)
        yield
        return
    task = asyncio.create_task(companion.run(journal), name="companion")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


# -- the platforms' parts ------------------------------------------------------------------------


def _same(settings: Settings) -> Settings:
    return settings


def _sagemaker_settings(settings: Settings) -> Settings:
    """On SageMaker the app type, and so the server's local URL, follow from the metadata file."""
    from lamplighter.sagemaker.identity import AppIdentity, jupyter_base_url

    identity = AppIdentity.from_metadata(settings.sagemaker_metadata)
    if identity.app_type == "CodeEditor":
        return replace(settings, app_type="code-editor", editor_port=settings.editor_port or 8888)
    if identity.app_type == "JupyterServer":
        # Studio Classic: the free JupyterServer app culls the billed KernelGateway apps.
        settings = replace(settings, app_type="jupyter-server")
    if settings.url:
        return settings
    return replace(settings, url=f"http://127.0.0.1:8888{jupyter_base_url(identity.app_type)}")


def _jupyter_api(settings: Settings, conn: Connection | None) -> Probe:
    from lamplighter.platforms.jupyter import JupyterServer

    assert conn is not None  # the row connects
    return JupyterServer(conn)


def _code_editor(settings: Settings, conn: Connection | None) -> Probe:
    from lamplighter.platforms.codeeditor import CodeEditorOptions, CodeEditorProbe

    options = CodeEditorOptions(healthz_url=settings.code_server_healthz, server_port=settings.editor_port)
    if settings.code_editor_data_dir:
        options = replace(options, data_dirs=(settings.code_editor_data_dir,))
    return CodeEditorProbe(
        options,
        agent_started=datetime.now(timezone.utc),
        target=f"code-editor:{settings.editor_port or 'sagemaker'}",
    )


def _jupyter_shutdown(settings: Settings, conn: Connection | None) -> Stopper:
    from lamplighter.platforms.jupyter import JupyterShutdown

    if conn is None:
        raise ConfigError("action: nothing to stop with; give --url, --editor-port, or --action command")
    return JupyterShutdown(conn, verify_timeout_s=settings.stop_verify_timeout.total_seconds())


def _end_process(settings: Settings, conn: Connection | None) -> Stopper:
    if not settings.editor_port:
        raise ConfigError(
            "editor_port: stopping a plain code-server needs --editor-port (or --action command)"
        )
    return ProcessStopper(settings.editor_port, verify_timeout_s=settings.stop_verify_timeout.total_seconds())


def _delete_app(settings: Settings, conn: Connection | None) -> Stopper:
    from lamplighter.platforms.sagemaker import SageMakerStopper
    from lamplighter.sagemaker.identity import AppIdentity

    identity = AppIdentity.from_metadata(settings.sagemaker_metadata)
    if settings.region:
        identity = replace(identity, region=settings.region)
    return SageMakerStopper(
        identity,
        endpoint_url=settings.sagemaker_endpoint_url,
        verify_timeout_s=settings.stop_verify_timeout.total_seconds(),
    )


def _behind_a_hub(settings: Settings) -> Settings:
    """A Jupyter server that is a hub user's server is stopped through the hub once the hub is known:
    inside the server (``JUPYTERHUB_USER`` and ``JUPYTERHUB_API_URL``, as jupyterhub-singleuser is
    started), or ``watch --url …/user/NAME/ --hub-url …``."""
    import os

    from lamplighter.platforms.jupyterhub import server_from_env_or_url

    if settings.platform != "jupyter" or not settings.hub_url or settings.action != "shutdown":
        return settings
    if server_from_env_or_url(os.environ, settings.url) is None:
        return settings
    return replace(settings, platform="jupyterhub")


def _hub_settings(settings: Settings) -> Settings:
    """A hub user's server is found from JUPYTERHUB_* (inside it) or its …/user/NAME/ URL; the hub's
    API from ``hub_url`` (JUPYTERHUB_API_URL inside it)."""
    if not settings.hub_url:
        raise ConfigError(
            "hub_url: stopping through the hub needs --hub-url (JUPYTERHUB_API_URL inside a hub user's server)"
        )
    return settings


def _hub_delete(settings: Settings, conn: Connection | None) -> Stopper:
    import os

    from lamplighter.platforms.jupyterhub import HubStop, server_from_env_or_url

    server = server_from_env_or_url(os.environ, settings.url)
    if server is None or not settings.hub_url:
        raise ConfigError(
            "url: which hub server? give --url …/user/NAME/ (or run inside the user's server, where "
            "JUPYTERHUB_USER names it)"
        )
    return HubStop(
        settings.hub_url,
        # Inside the server JUPYTERHUB_API_TOKEN is the server's own token: it needs delete:servers!user.
        settings.hub_token or settings.token,
        server,
        remove=settings.remove_named_servers,
        verify_tls=settings.verify_tls,
        timeout_s=settings.request_timeout.total_seconds(),
        verify_timeout_s=settings.stop_verify_timeout.total_seconds(),
    )


# -- notebook instances --------------------------------------------------------------------------


def _notebook_instance_settings(settings: Settings) -> Settings:
    """A notebook instance's Jupyter server is its own ``https://localhost:8443``, self-signed: with no
    ``--url`` that loopback URL is used and its certificate is not verified (that URL only)."""
    if settings.url:
        return settings
    return replace(settings, url=f"https://localhost:{settings.notebook_instance_port}/", verify_tls=False)


def _notebook_instance(settings: Settings) -> NotebookInstanceIdentity:
    """``--notebook-instance`` (and ``--region``) if given, else the instance's metadata file."""
    from lamplighter.sagemaker.notebook_instance import NotebookInstanceIdentity

    if settings.notebook_instance:
        return NotebookInstanceIdentity(settings.notebook_instance, settings.region)
    identity = NotebookInstanceIdentity.from_metadata(settings.sagemaker_metadata)
    return replace(identity, region=settings.region) if settings.region else identity


def _notebook_instance_probe(settings: Settings, conn: Connection | None) -> Probe:
    import logging

    from lamplighter.platforms.jupyter import JupyterServer
    from lamplighter.platforms.notebook_instance import NotebookInstanceProbe

    assert conn is not None  # the row connects
    identity = _notebook_instance(settings)
    if not conn.verify_tls:
        logging.getLogger(__name__).info("not verifying the TLS certificate of %s", conn.display_url)
    return NotebookInstanceProbe(JupyterServer(conn), identity, endpoint_url=settings.sagemaker_endpoint_url)


def _no_code_editor(settings: Settings) -> Settings:
    raise ConfigError("app_type: a notebook instance runs Jupyter, not Code Editor (--app-type jupyter)")


def _stop_notebook_instance(settings: Settings, conn: Connection | None) -> Stopper:
    from lamplighter.platforms.notebook_instance import NotebookInstanceStopper

    return NotebookInstanceStopper(
        _notebook_instance(settings),
        endpoint_url=settings.sagemaker_endpoint_url,
        verify_timeout_s=settings.stop_verify_timeout.total_seconds(),
    )


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """How one kind of app is watched and stopped."""

    probe: Callable[[Settings, Connection | None], Probe]
    """Observes the app; gets the connection when :attr:`connects`."""
    stopper: Callable[[Settings, Connection | None], Stopper]
    """The platform's own stop (``--action shutdown``)."""
    connects: bool
    """The probe talks to the server's REST API (``--url``, token, cookies)."""
    resolve: Callable[[Settings], Settings] = _same
    """Fills in what the platform itself knows (SageMaker: the app type and URL from its metadata)."""
    stops_in_process: bool = False
    """In-server mode stops the server it runs in directly instead (the stop *is* a server shutdown)."""
    companion: Callable[..., Companion] | None = None
    """Builds the loop that runs beside the agent: ``companion(settings, conn, view=None)``."""


_JUPYTER = Row(_jupyter_api, _jupyter_shutdown, connects=True, stops_in_process=True, resolve=_behind_a_hub)
_HUB_JUPYTER = Row(_jupyter_api, _hub_delete, connects=True, resolve=_hub_settings)
_STUDIO_JUPYTER = Row(_jupyter_api, _delete_app, connects=True, resolve=_sagemaker_settings)
_NOTEBOOK_INSTANCE = Row(
    _notebook_instance_probe, _stop_notebook_instance, connects=True, resolve=_notebook_instance_settings
)


# -- Studio Classic: the JupyterServer app is free, its KernelGateway apps are billed -------------


def _classic_server_stop(settings: Settings, conn: Connection | None) -> Stopper:
    from lamplighter.platforms.studio_classic import KeepServer

    return _delete_app(settings, conn) if settings.classic_stop_server else KeepServer()


def _classic_culler(settings: Settings, conn: Connection | None, view: object = None) -> Companion:
    """The KernelGateway apps' culler; ``view`` reads the server's kernels (default: through ``conn``)."""
    from lamplighter.platforms.studio_classic import (
        ClassicApps,
        ClassicCuller,
        RestView,
        SageMakerApps,
        ServerView,
        StudioAppsEndpoint,
    )
    from lamplighter.sagemaker.identity import AppIdentity

    if conn is None:
        raise ConfigError("url: the Studio Classic culler needs the JupyterServer's URL")
    apps: ClassicApps
    if settings.classic_apps_api == "sagemaker":
        from lamplighter.sagemaker.client import sagemaker_client

        identity = AppIdentity.from_metadata(settings.sagemaker_metadata)
        region = settings.region or identity.region
        client = sagemaker_client(region=region, endpoint_url=settings.sagemaker_endpoint_url)
        apps = SageMakerApps(identity, client)
    else:
        apps = StudioAppsEndpoint(conn)
    server_view: ServerView = view if view is not None else RestView(conn)  # type: ignore[assignment]
    return ClassicCuller(settings, server_view, apps, target=conn.display_url)


_STUDIO_CLASSIC = Row(
    _jupyter_api,
    _classic_server_stop,
    connects=True,
    resolve=_sagemaker_settings,
    companion=_classic_culler,
)

ROWS: dict[tuple[str, str], Row] = {
    # (--platform, --app-type); off SageMaker a Studio Classic JupyterServer app is watched like JupyterLab
    ("jupyter", "jupyter"): _JUPYTER,
    ("jupyter", "jupyter-server"): _JUPYTER,
    ("jupyter", "code-editor"): Row(_code_editor, _end_process, connects=False),
    # a hub user's server: its own Jupyter API, stopped through the hub (the user sees "not running")
    ("jupyterhub", "jupyter"): _HUB_JUPYTER,
    ("jupyterhub", "jupyter-server"): _HUB_JUPYTER,
    ("jupyterhub", "code-editor"): Row(_code_editor, _hub_delete, connects=False, resolve=_hub_settings),
    ("sagemaker", "jupyter"): _STUDIO_JUPYTER,
    # Studio Classic: a JupyterServer app (its metadata says so) culls its KernelGateway apps
    ("sagemaker", "jupyter-server"): _STUDIO_CLASSIC,
    ("sagemaker", "code-editor"): Row(_code_editor, _delete_app, connects=False, resolve=_sagemaker_settings),
    # a notebook instance: its own Jupyter server on https://localhost:8443, stopped (not deleted)
    ("sagemaker-notebook-instance", "jupyter"): _NOTEBOOK_INSTANCE,
    ("sagemaker-notebook-instance", "jupyter-server"): _NOTEBOOK_INSTANCE,
    ("sagemaker-notebook-instance", "code-editor"): Row(
        _notebook_instance_probe, _stop_notebook_instance, connects=True, resolve=_no_code_editor
    ),
}


def row_for(settings: Settings) -> tuple[Row, Settings]:
    """The row for the settings, and the settings with what the platform knows filled in."""

    def lookup(s: Settings) -> Row:
        try:
            return ROWS[(s.platform, s.app_type)]
        except KeyError:
            raise ConfigError(
                f"app_type: {s.app_type!r} is not supported on the {s.platform} platform"
            ) from None

    resolved = lookup(settings).resolve(settings)
    return lookup(resolved), resolved


def build_stopper(
    settings: Settings, conn: Connection | None, target: str, *, in_process: Stopper | None = None
) -> Stopper:
    """The stopper ``--action`` asks for, wrapped in :class:`DryRun` under ``--dry-run``.

    ``in_process`` is the in-server extension's own shutdown, used where the row stops in process.
    """
    if settings.action == "none":
        return NoStop()
    stopper: Stopper
    if settings.action == "command":
        if not settings.command:
            raise ConfigError("command: --action command needs --command 'shell command'")
        stopper = CommandStopper(settings.command, target)
    else:
        row, settings = row_for(settings)
        if in_process is not None and row.stops_in_process:
            stopper = in_process
        else:
            stopper = row.stopper(settings, conn)
    return DryRun(stopper) if settings.dry_run else stopper


def local_port(settings: Settings) -> int | None:
    """The port of the watched server when it runs on this machine (its process tree is then ours to read)."""
    if settings.app_type == "code-editor":
        return settings.editor_port
    parts = urlsplit(settings.url or "")
    if parts.hostname not in LOOPBACK_HOSTS:
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


@asynccontextmanager
async def open_target(settings: Settings) -> AsyncIterator[Target]:
    """The target the settings describe, with its connection open for as long as the block runs."""
    row, settings = row_for(settings)
    notifier = None
    if settings.warn_before is not None:
        notifier = Notifier(settings, settings.url or "code-editor", server_port=local_port(settings))
    async with AsyncExitStack() as stack:
        conn = await stack.enter_async_context(connection_from_settings(settings)) if row.connects else None
        probe = row.probe(settings, conn)
        companion = row.companion(settings, conn) if row.companion is not None else None
        yield Target(
            probe,
            build_stopper(settings, conn, probe.target),
            conn,
            build_signals(settings),
            notifier,
            companion,
        )
