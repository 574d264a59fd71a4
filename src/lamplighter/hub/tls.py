"""A hub's internal SSL (``c.JupyterHub.internal_ssl = True``): the client certificate the service shows.

With internal SSL the hub's API and every user's server speak https with certificates of the hub's
own CAs and ask the client for a certificate too. A hub-managed service is given its own pair and
the CA bundle it should trust as ``JUPYTERHUB_SSL_KEYFILE``, ``JUPYTERHUB_SSL_CERTFILE`` and
``JUPYTERHUB_SSL_CLIENT_CA``; without them (a service the hub does not start), the pair is the hub's
own ``hub-internal`` one under ``internal_certs_location`` and the CA bundle the hub's trust bundle,
as jupyterhub-idle-culler's ``--ssl-enabled`` reads them.
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
    """``(key, certificate, CA bundle)``: the hub's variables when it set all three, else the certs location."""
    if all(env.get(name) for name in _ENV):
        key, cert, ca = (Path(env[name]) for name in _ENV)
    else:
        where = settings.internal_certs_location
        key = where / "hub-internal" / "hub-internal.key"
        cert = where / "hub-internal" / "hub-internal.crt"
        # The hub's own trust bundle: its CA and those of its servers (the culler only talks to the hub
        # and reads hub-ca.crt; the service also probes the servers, whose certificates notebooks-ca signs).
        ca = where / "hub-ca_trust.crt"
    for path in (key, cert, ca):
        if not path.is_file():
            raise ConfigError(
                f"ssl_enabled: cannot read {path} (internal_certs_location or JUPYTERHUB_SSL_*)"
            )
    return key, cert, ca


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
