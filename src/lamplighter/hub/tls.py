"""A hub's internal SSL (``c.JupyterHub.internal_ssl = True``): the client certificate the service shows.

With internal SSL the hub's API and every user's server speak https with certificates of the hub's
own CAs, and ask the client for a certificate too. The service shows the hub's own ``hub-internal``
pair from ``internal_certs_location`` and trusts the hub's trust bundle (``hub-ca_trust.crt``: the
hub's CA and the servers'), as jupyterhub-idle-culler's ``--ssl-enabled`` reads them.

The pair a hub-managed service is given (``JUPYTERHUB_SSL_KEYFILE``/``CERTFILE``/``CLIENT_CA``) does not
do: the hub's ``notebooks-ca`` signs it, and the users' servers accept client certificates of
``hub-ca`` and ``proxy-client-ca`` only (the hub's ``internal_ssl_components_trust``); JupyterHub
6.1 refused such a pair on its own API too (tests/test_hub_ssl.py). It is refused here with that reason.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from lamplighter.errors import ConfigError
from lamplighter.settings import Settings

__all__ = ["internal_ssl_context", "internal_ssl_files"]

_ENV = ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA")


def internal_ssl_files(settings: Settings, env: Mapping[str, str]) -> tuple[Path, Path, Path]:
    """``(key, certificate, CA bundle)`` under ``internal_certs_location``; a ConfigError names what is missing."""
    where = settings.internal_certs_location
    key = where / "hub-internal" / "hub-internal.key"
    cert = where / "hub-internal" / "hub-internal.crt"
    ca = where / "hub-ca_trust.crt"
    missing = [path for path in (key, cert, ca) if not path.is_file()]
    if not missing:
        return key, cert, ca
    if all(env.get(name) for name in _ENV):
        raise ConfigError(
            f"ssl_enabled: cannot read {missing[0]}; the JUPYTERHUB_SSL_* pair the hub gives its services "
            "is not accepted by the users' servers (notebooks-ca signs it): set internal_certs_location to "
            "the hub's internal-ssl directory"
        )
    raise ConfigError(f"ssl_enabled: cannot read {missing[0]} (set internal_certs_location)")


def internal_ssl_context(settings: Settings, env: Mapping[str, str]) -> ssl.SSLContext | None:
    """The client context for the hub and its servers, or ``None`` without ``ssl_enabled``."""
    if not settings.ssl_enabled:
        return None
    key, cert, ca = internal_ssl_files(settings, env)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ssl_enabled: cannot load the certificates under {cert.parent}: {exc}") from None
    return context
