"""A Jupyter server's URL as it enters lamplighter: parsed strictly, its token lifted out, one spelling per server.

The settings parse ``--url`` here, and :class:`~lamplighter.remote.connection.Connection` connects
to what comes out; the journal's claim uses :func:`server_key` so that one server has one agent
however its URL is spelled.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from lamplighter.errors import ConfigError
from lamplighter.redaction import CREDENTIAL_PARAMS, MASK, hide, redact

__all__ = ["LOOPBACK_HOSTS", "server_key", "split_server_url", "url_credentials"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})
"""Host names that mean this machine (0.0.0.0: where a server listens on every address)."""

_LOGIN_PAGE = re.compile(r"^(.*?/)(?:lab|tree|notebooks)(?:/.*)?$")


def split_server_url(url: str) -> tuple[str, str | None]:
    """Return ``(base_url, token)``: the URL normalised to end in ``/``, and a ``?token=`` lifted out of it.

    This is where a server URL enters, and it is strict: a malformed host or port, user info
    (``user:password@``) and any query parameter but ``token`` are a :class:`ConfigError`, so nothing
    that may be a credential stays in the base URL (which is logged and journaled). A token pasted as
    part of the URL (as Jupyter prints it) moves into the Authorization header here. Error messages
    show the URL through :func:`~lamplighter.redaction.redact`. The fragment is never sent, and dropped.
    """
    text = url.strip()
    hide(*url_credentials(text))
    try:
        parts = urlsplit(text)
        hostname = parts.hostname
    except ValueError as exc:  # an unclosed IPv6 bracket, for one
        raise ConfigError(f"url: not a valid URL ({exc}): {_shown(text)!r}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"url: expected http(s)://host[:port]/base/, got {_shown(text)!r}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"url: the port must be a number from 1 to 65535, got {_shown(text)!r}")
    if "@" in parts.netloc:
        raise ConfigError(
            "url: user info (user:password@) is not supported; give the token with LAMPLIGHTER_TOKEN "
            f"or --token-file, or login cookies with LAMPLIGHTER_COOKIES: {_shown(text)!r}"
        )
    token: str | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "token" and token is None:
            token = value or None
            continue
        if name == "token":
            raise ConfigError("url: the query parameter 'token' is given more than once; give it once")
        if name.lower() in CREDENTIAL_PARAMS:
            raise ConfigError(
                f"url: the query parameter {name!r} carries a credential lamplighter does not use; pass "
                "a Jupyter token as ?token= or LAMPLIGHTER_TOKEN (for a Studio app, --sagemaker-domain)"
            )
        raise ConfigError(
            f"url: unexpected query parameter {redact(name)[:40]!r}; give the server's base URL, "
            "e.g. http://127.0.0.1:8888/base/ (only ?token= is taken from it)"
        )
    path = parts.path
    if token:
        # The login URL Jupyter prints ({base}lab?token=..., {base}tree?token=...) names a page, not the base.
        page = _LOGIN_PAGE.match(path)
        path = page.group(1) if page else path
    path = path if path.endswith("/") else path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), token


def url_credentials(text: str) -> tuple[str, ...]:
    """What a URL may carry as a credential: its user info's password (or a lone user name, which is a
    token in ``https://TOKEN@host/``) and every query value (a token, a signature). Never raises: it
    serves to hide them before the URL is checked, or when it is not one."""
    try:
        parts = urlsplit(text.strip())
        secret = parts.password if parts.password is not None else parts.username
    except ValueError:
        return ()
    values = [value for _, value in parse_qsl(parts.query, keep_blank_values=True) if value]
    return (secret, *values) if secret else tuple(values)


def _shown(text: str) -> str:
    """A URL that failed to parse, fit for an error line: no query or fragment, user info masked."""
    head = re.split(r"[?#]", text, maxsplit=1)[0]
    scheme, sep, rest = head.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    head = scheme + sep + netloc + slash + path if sep else (MASK if "@" in head else head)
    return redact(head if len(head) <= 80 else head[:77] + "...")


def server_key(url: str) -> str:
    """One spelling per server: ``http://localhost:8888`` (what the extension sees) and
    ``http://127.0.0.1:8888/`` (what ``watch --url`` was given) are the same server. Anything that is
    not an http(s) URL (``code-editor:8888``) is its own key."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return url
    host = "127.0.0.1" if parts.hostname in LOOPBACK_HOSTS else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"{parts.scheme}://{host}:{port}{path}"
