"""One authenticated connection to a Jupyter server: URLs, auth, XSRF, and error translation.

Every command that talks to a Jupyter server (the probe, the stop action, the kernel, notebook and
terminal runners, on-start) goes through :class:`Connection`, so auth and the mapping of httpx
failures onto lamplighter's error tree live here and nowhere else.

Auth is either a token (``Authorization: token T``, which skips XSRF checks) or a cookie jar (a
browser login, a JupyterHub OAuth cookie, a SageMaker presigned login). With cookies, Tornado wants the
``_xsrf`` cookie echoed as ``X-XSRFToken`` on every POST/PUT/PATCH/DELETE; the cookie is only set when
an HTML page is rendered, so we ``GET {base}tree`` once before the first mutating request.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from lamplighter.errors import (
    AuthRejected,
    ConfigError,
    ConnectFailed,
    MalformedAnswer,
    NotFound,
    RemoteError,
    RemoteTimeout,
)
from lamplighter.redaction import hide
from lamplighter.server_url import split_server_url

if TYPE_CHECKING:
    from lamplighter.settings import Settings

__all__ = ["Connection", "connection_from_settings", "parse_cookie_header"]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_USER_AGENT = "lamplighter"


def _display(url: str) -> str:
    """The URL without query, fragment or user info: safe to print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Connection:
    """An authenticated HTTP client bound to one Jupyter server's base URL.

    Use as ``async with Connection(url, token=...) as conn``. Paths are relative to the base URL
    (``"api/status"``). Every request is untracked (``no_track_activity=1``) unless asked otherwise,
    so watching a server never makes it look used.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        cookies: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a context of our own (a client certificate: a hub's internal SSL) instead of ``verify_tls``."""
        base, url_token = split_server_url(url)
        self.base_url = base
        self.display_url = _display(base)
        self._token = token or url_token
        hide(self._token, *(cookies or {}).values())
        self.verify_tls = verify_tls
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"token {self._token}"
        self._client = httpx.AsyncClient(
            base_url=base,
            headers=headers,
            cookies=dict(cookies or {}),
            verify=tls if tls is not None else _tls_context(base, verify_tls),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )
        self._xsrf_checked = self._token is not None

    def __repr__(self) -> str:
        auth = "token" if self._token else ("cookies" if self._client.cookies else "none")
        return f"Connection({self.display_url!r}, auth={auth})"

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def uses_token(self) -> bool:
        return self._token is not None

    # -- HTTP ---------------------------------------------------------------------------------

    async def get(
        self, path: str, *, params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """GET a JSON document, untracked."""
        return await self.request("GET", path, params=params, headers=headers)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        track_activity: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer (``None`` for an empty body).

        ``content`` is a body already encoded as JSON, for documents httpx's strict encoder refuses
        (a notebook whose parameters hold ``NaN``, which Python's json and the server both accept).

        Raises the matching :class:`RemoteError` subclass; never an httpx exception.
        """
        method = method.upper()
        if method in _MUTATING:
            await self._ensure_xsrf()
        query = dict(params or {})
        if not track_activity:
            query["no_track_activity"] = "1"
        response = await self._send(
            method, path, json_body=json_body, content=content, params=query, headers=headers
        )
        return self._decode(response, method, path)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        headers = dict(headers or {})
        if content is not None:
            headers["Content-Type"] = "application/json"
        xsrf = self._client.cookies.get("_xsrf")
        if method in _MUTATING and xsrf and not self._token:
            headers["X-XSRFToken"] = xsrf
        where = f"{method} {self.display_url}{path}"
        request: dict[str, Any] = {"method": method, "url": f"{self.display_url}{path}"}
        try:
            return await self._client.request(
                method, path, json=json_body, content=content, params=params, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise RemoteTimeout(f"{where}: no answer in time ({type(exc).__name__})", **request) from exc
        except httpx.RemoteProtocolError as exc:
            raise ConnectFailed(
                f"{where}: the server closed the connection without answering", **request
            ) from exc
        except httpx.ConnectError as exc:
            raise ConnectFailed(f"{where}: cannot connect ({_reason(exc)})", **request) from exc
        except httpx.TransportError as exc:
            raise ConnectFailed(f"{where}: {type(exc).__name__} ({_reason(exc)})", **request) from exc
        except ssl.SSLError as exc:
            # A TLS 1.3 server refuses a client certificate after the handshake: httpx lets it through.
            raise ConnectFailed(f"{where}: TLS refused ({exc.reason or exc})", **request) from exc

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        where = f"{method} {self.display_url}{path}"
        status = response.status_code
        request: dict[str, Any] = {"status": status, "method": method, "url": f"{self.display_url}{path}"}
        if status in (401, 403):
            raise AuthRejected(
                f"{where}: the server refused our credentials (HTTP {status}); check the token or cookies",
                **request,
            )
        if 300 <= status < 400:
            # An API call that redirects is usually a login page: the auth did not take.
            raise AuthRejected(
                f"{where}: redirected to a login page (HTTP {status}); not authenticated", **request
            )
        if status == 404:
            raise NotFound(f"{where}: not found (HTTP 404); is the base URL right?", **request)
        if status >= 400:
            raise RemoteError(f"{where}: HTTP {status} {_server_message(response)}".rstrip(), **request)
        if status == 204 or not response.content:
            return None
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedAnswer(f"{where}: the answer is not JSON (HTTP {status})", **request) from exc

    async def _ensure_xsrf(self) -> None:
        """Fetch the ``_xsrf`` cookie once, for cookie-authenticated mutating requests."""
        if self._xsrf_checked:
            return
        self._xsrf_checked = True
        if self._client.cookies.get("_xsrf"):
            return
        try:
            # The page is rendered (and the cookie set) even when it redirects to a login form.
            await self._client.get("tree", follow_redirects=True, headers={"Accept": "text/html"})
        except httpx.HTTPError as exc:
            raise ConnectFailed(
                f"GET {self.display_url}tree: cannot fetch the _xsrf cookie ({_reason(exc)})"
            ) from exc

    # -- Websockets ---------------------------------------------------------------------------

    def ws_url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The ``ws(s)://`` URL of a websocket endpoint below the base URL."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = urlencode(dict(params or {}))
        return urlunsplit((scheme, parts.netloc, parts.path + path.lstrip("/"), query, ""))

    def ws_headers(self) -> dict[str, str]:
        """Headers that authenticate a websocket handshake (token header, or the cookie jar)."""
        headers = {"User-Agent": _USER_AGENT}
        if self._token:
            headers["Authorization"] = f"token {self._token}"
        jar = "; ".join(f"{c.name}={c.value}" for c in self._client.cookies.jar)
        if jar:
            headers["Cookie"] = jar
        return headers


def _tls_context(base_url: str, verify_tls: bool) -> ssl.SSLContext | bool:
    """A plain-http server needs no CA bundle (loading it costs the long-running agent ~1 MB).

    The bare context still requires verification, so a redirect to https fails closed, never open.
    """
    if verify_tls and base_url.startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return verify_tls


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _server_message(response: httpx.Response) -> str:
    """The short ``message`` Jupyter puts in error bodies, if any (never the whole body)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message[:200]
    return ""


def parse_cookie_header(text: str) -> dict[str, str]:
    """``"a=1; b=2"`` → ``{"a": "1", "b": "2"}``; raises ``ConfigError`` without echoing values."""
    jar: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.strip().partition("=")
        if not sep or not name:
            raise ConfigError("cookies: expected 'name=value; name2=value2'")
        jar[name.strip()] = value.strip()
    return jar


def connection_from_settings(settings: Settings) -> Connection:
    """The connection every command builds from the one settings object."""
    if not settings.url:
        raise ConfigError("url: no server given; pass --url or set LAMPLIGHTER_URL (or JL_HOSTNAME/JL_PORT)")
    return Connection(
        settings.url,
        token=settings.token,
        cookies=parse_cookie_header(settings.cookies) if settings.cookies else None,
        verify_tls=settings.verify_tls,
        timeout_s=settings.request_timeout.total_seconds(),
    )
