"""A hub with internal SSL (``c.JupyterHub.internal_ssl = True``) on loopback: its API and its servers
speak https and want a client certificate. The service with ``ssl_enabled`` shows the hub's
``hub-internal`` pair from ``internal_certs_location`` (jupyterhub-idle-culler's ``--ssl-enabled``).
The pair a hub-managed service is given in ``JUPYTERHUB_SSL_*`` is signed by the hub's notebooks-ca,
which the users' servers refuse as a client: shown here with a pair of that CA."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest

from lamplighter.errors import ConfigError, ConnectFailed, RemoteError
from lamplighter.hub.tls import internal_ssl_context, internal_ssl_files
from lamplighter.model import Action, Decision
from lamplighter.platforms.jupyterhub import HubApi, HubServer
from lamplighter.remote.connection import Connection
from lamplighter.settings import load_settings
from tests.conftest import cli
from tests.hub import hub_settings, running_fleet, running_hub
from tests.test_hub_fleet import gone, stops


def test_missing_certificates_are_one_config_error_naming_the_file(tmp_path: Path) -> None:
    files = [tmp_path / name for name in ("k.key", "c.crt", "ca.crt")]
    for path in files:
        path.write_text("x")
    names = ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA")
    env = {name: str(path) for name, path in zip(names, files, strict=True)}
    settings = load_settings(
        {"ssl_enabled": "true", "internal_certs_location": str(tmp_path / "none")}, env={}
    )
    with pytest.raises(ConfigError, match=r"ssl_enabled: cannot read .*none/hub-internal/hub-internal.key"):
        internal_ssl_files(settings, {})
    with pytest.raises(ConfigError, match="not accepted by the users' servers"):
        internal_ssl_files(settings, env)
    (tmp_path / "none" / "hub-internal").mkdir(parents=True)
    for name in ("hub-internal/hub-internal.key", "hub-internal/hub-internal.crt", "hub-ca_trust.crt"):
        (tmp_path / "none" / name).write_text("x")
    with pytest.raises(ConfigError, match="ssl_enabled: cannot load the certificates"):
        internal_ssl_context(settings, {})  # not certificates at all
    assert internal_ssl_context(load_settings({}, env={}), {}) is None


@pytest.mark.slow
async def test_the_service_watches_and_stops_through_a_hub_with_internal_ssl(tmp_path: Path) -> None:
    with running_hub(tmp_path / "hub", internal_ssl=True) as hub:
        assert hub.api.startswith("https://")
        name = "ssluser"
        await asyncio.to_thread(hub.start, name)
        certs = tmp_path / "hub" / "internal-ssl"
        # Without the client certificate neither the hub nor the server lets us in.
        async with Connection(hub.api, token=hub.service_token) as plain:
            with pytest.raises(RemoteError) as refused:
                await HubApi(plain).check_access()
            assert isinstance(refused.value, ConnectFailed) or refused.value.status is None
        settings = hub_settings(
            hub, tmp_path, idle_timeout="4s", ssl_enabled="true", internal_certs_location=str(certs)
        )
        tls = internal_ssl_context(settings, {})
        assert tls is not None
        # What a hub-managed service gets in JUPYTERHUB_SSL_*: a pair notebooks-ca signed (the server's
        # own is one) and notebooks-ca's bundle. The hub takes it; the server refuses it as a client.
        managed = ssl.create_default_context(cafile=str(certs / "hub-ca_trust.crt"))
        managed.load_cert_chain(
            certs / f"user-{name}" / f"user-{name}.crt", certs / f"user-{name}" / f"user-{name}.key"
        )
        async with Connection(hub.api, token=hub.service_token, tls=managed) as to_hub:
            await HubApi(to_hub).check_access()
        async with Connection(hub.own_url(name), token=hub.service_token, tls=managed) as as_service:
            with pytest.raises(RemoteError) as tls_refused:
                await as_service.get("api/status")
            assert tls_refused.value.status is None  # refused in the handshake, not by HTTP
        async with Connection(hub.own_url(name), token=hub.service_token, tls=tls) as as_hub:
            assert "started" in await as_hub.get("api/status")
        decisions: list[tuple[HubServer, Decision]] = []
        async with running_fleet(hub, settings, decisions, tls=tls):
            await gone(hub, settings, name)
        # Judged idle on probes of the server's own https address: a failed probe is never idle.
        assert decisions and decisions[-1][1].action is Action.STOP
        assert all(d.action is not Action.SKIP for _, d in decisions), [d.reason for _, d in decisions]
        [stop] = stops(settings)
        assert stop.verdict == "stopped" and stop.detail["stopper"].startswith("DELETE https://")
        assert 0 <= stop.detail["decided_after_s"] <= 1.0, stop.detail


def test_the_hub_command_refuses_ssl_without_the_hubs_certificates(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "LAMPLIGHTER_"))}
    env = {
        **clean,
        "JUPYTERHUB_API_URL": "https://127.0.0.1:1/hub/api",
        "JUPYTERHUB_API_TOKEN": "secret-token-here",
        **{name: str(tmp_path / name) for name in ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE")},
        "JUPYTERHUB_SSL_CLIENT_CA": str(tmp_path / "ca.crt"),
    }
    args = ["hub", "--ssl-enabled", "--internal-certs-location", str(tmp_path / "nowhere")]
    done = cli(*args, "--journal", str(tmp_path / "j.sqlite3"), env=env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("lamplighter: ssl_enabled: cannot read ") and "notebooks-ca" in line, line
    assert "secret-token-here" not in line
