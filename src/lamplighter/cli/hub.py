"""``lamplighter hub``: run as a JupyterHub service that stops idle servers (jupyterhub-idle-culler's job).

The token is the service's own (``JUPYTERHUB_API_TOKEN``, set by the hub for a hub-managed service);
the hub's API URL comes from ``JUPYTERHUB_API_URL`` or ``--hub-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING

from lamplighter.cli.common import (
    EXIT_OK,
    add_command,
    add_settings_options,
    settings_from_args,
    start_logging,
)
from lamplighter.errors import ConfigError
from lamplighter.journal import Journal
from lamplighter.model import Decision, format_time
from lamplighter.settings import Settings

if TYPE_CHECKING:
    from lamplighter.platforms.jupyterhub import HubServer

__all__ = ["add_hub_parser"]

logger = logging.getLogger(__name__)

_EPILOG = """\
Scopes the service's role needs: list:users, read:users:activity, read:servers, delete:servers,
access:servers (to probe the servers) and proxy (the servers' own addresses: probes never pass the
proxy, so they never count as the user's activity in the hub); admin:users only for --cull-users. See
the README's "JupyterHub" section."""


def add_hub_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = add_command(
        commands,
        "hub",
        "Run as a JupyterHub service: stop every idle server, never one with work running.",
        description="Watch every ready server of a JupyterHub at its own address without creating "
        "activity, and stop each through the hub within a second of its idle deadline.",
        epilog=_EPILOG,
    )
    add_settings_options(
        hub,
        groups=("hub", "policy", "action", "journal"),
        # Of the reports' group, what the service reads (report_to is the extension's).
        names=("verify_tls", "request_timeout", "service_url", "service_prefix"),
    )
    hub.add_argument(
        "--timeout",
        dest="idle_timeout",
        metavar="DURATION",
        default=argparse.SUPPRESS,
        help="jupyterhub-idle-culler's name for --idle-timeout.",
    )
    hub.set_defaults(handler=_hub)


def _hub(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    start_logging(args, settings.log_level)
    asyncio.run(run_hub(settings))
    return EXIT_OK


async def run_hub(settings: Settings) -> None:
    """The service: the fleet loop until SIGTERM or Ctrl-C."""
    from lamplighter.agent import exit_on_signals
    from lamplighter.hub.fleet import HubFleet, refuse_local_only
    from lamplighter.hub.service import check_service_url, serving
    from lamplighter.hub.tls import internal_ssl_context
    from lamplighter.platforms.jupyterhub import HubApi
    from lamplighter.remote.connection import Connection

    refuse_local_only(settings)
    url, token = _hub_access(settings)
    tls = internal_ssl_context(settings, os.environ)
    check_service_url(settings)
    timeout_s = settings.request_timeout.total_seconds()
    conn = Connection(url, token=token, verify_tls=settings.verify_tls, timeout_s=timeout_s, tls=tls)
    async with conn:
        api = HubApi(conn, page_size=settings.api_page_size)
        # A wrong URL or token is a configuration error found at start, not a warning every pass.
        await api.check_access()
        with Journal(settings.journal) as journal:
            # With service_url: the servers' reports in, the status page and metrics out (hub/service.py).
            async with serving(settings, journal, hub_url=url, token=token, tls=tls) as service:
                hooks = service.hooks if service is not None else None
                fleet = HubFleet(settings, api, journal, token=token, tls=tls, hooks=hooks)
                if hooks is not None:
                    hooks.book.on_unknown = fleet.heard_from
                with exit_on_signals(fleet.request_exit):
                    await fleet.run()


def hub_status(settings: Settings, *, as_json: bool) -> int:
    """``status --hub``: every server of the hub with its verdict, reasons and planned stop."""
    verdicts = asyncio.run(_verdicts(settings))
    if as_json:
        rows = [{"user": s.user, "server": s.name, "path": s.path, **d.to_dict()} for s, d in verdicts]
        print(json.dumps({"servers": rows}, indent=2))
        return EXIT_OK
    if not verdicts:
        print("no ready servers")
    for server, decision in verdicts:
        stop = f"  stop at {format_time(decision.stop_at)}" if decision.stop_at else ""
        print(f"{server.label:<24} {decision.action.value.upper():<5} {decision.reason}{stop}")
        for line in decision.reasons[1:]:
            print(f"{'':<24}   - {line}")
    return EXIT_OK


async def _verdicts(settings: Settings) -> list[tuple[HubServer, Decision]]:
    from lamplighter.hub.fleet import HubFleet
    from lamplighter.hub.tls import internal_ssl_context
    from lamplighter.platforms.jupyterhub import HubApi
    from lamplighter.remote.connection import Connection

    url, token = _hub_access(settings)
    tls = internal_ssl_context(settings, os.environ)
    timeout_s = settings.request_timeout.total_seconds()
    conn = Connection(url, token=token, verify_tls=settings.verify_tls, timeout_s=timeout_s, tls=tls)
    async with conn:
        api = HubApi(conn, page_size=settings.api_page_size)
        await api.check_access()
        with Journal.in_memory() as scratch:
            fleet = HubFleet(settings, api, scratch, token=token, tls=tls)
            if not settings.journal.exists():  # status never creates the service's journal
                return await fleet.verdicts()
            with Journal(settings.journal) as journal:
                return await fleet.verdicts(memory_from=journal)


def _hub_access(settings: Settings) -> tuple[str, str]:
    if not settings.hub_url:
        raise ConfigError("hub_url: no hub given; pass --hub-url or set JUPYTERHUB_API_URL")
    if not settings.hub_token:
        raise ConfigError("hub_token: no token; set JUPYTERHUB_API_TOKEN (the service's token)")
    return (
        settings.hub_url if settings.hub_url.endswith("/") else settings.hub_url + "/"
    ), settings.hub_token
