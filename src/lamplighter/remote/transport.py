"""The websocket transport: opening, reopening and error translation, shared by kernels and terminals.

The kernel channels (:mod:`lamplighter.remote.session`) and terminado (:mod:`lamplighter.remote.terminal`)
speak different protocols over the same kind of socket, opened here with the connection's auth. This is the
only module that opens a websocket, so it is also where websockets' exceptions become lamplighter's error
tree (:func:`websocket_error`); :mod:`lamplighter.remote.connection` stays free of websockets, which the
long-running watch agent never loads.

Stock Jupyter leaves Nagle on for its websocket handlers and Linux delays ACKs up to 40 ms, so a reply
spread over several small frames stalls ~40 ms per request. The client socket disables Nagle and re-arms
``TCP_QUICKACK`` on every read and write (one execute: ~48 ms → ~8 ms on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from lamplighter.errors import (
    AuthRejected,
    ConnectFailed,
    MalformedAnswer,
    NotFound,
    RemoteError,
    RemoteTimeout,
)
from lamplighter.remote.connection import Connection
from lamplighter.retry import Backoff, attempts

__all__ = ["RECONNECT_BACKOFF", "open_websocket", "reopen_websocket", "websocket_error"]

logger = logging.getLogger(__name__)

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

RECONNECT_BACKOFF = Backoff(first_s=0.05, longest_s=2.0)
"""Quick first tries (a proxy hiccup heals at once), then a steady pace within the reconnect budget."""


def websocket_error(exc: BaseException, where: str) -> RemoteError:
    """The lamplighter error for a websockets (or socket) failure at ``where``; raise it ``from exc``."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return AuthRejected(f"{where}: the server refused our credentials (HTTP {status})", status=status)
        if status == 404:
            return NotFound(f"{where}: not found (HTTP 404)")
        return RemoteError(f"{where}: the websocket handshake failed with HTTP {status}", status=status)
    if isinstance(exc, InvalidURI):
        return ConnectFailed(f"{where}: not a websocket URL")
    if isinstance(exc, InvalidHandshake):
        return MalformedAnswer(f"{where}: the websocket handshake failed ({type(exc).__name__})")
    if isinstance(exc, ConnectionClosed):
        return ConnectFailed(f"{where}: the websocket closed (code {exc.rcvd.code if exc.rcvd else 'none'})")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return RemoteTimeout(f"{where}: no answer in time (connect)")
    if isinstance(exc, OSError | WebSocketException):
        return ConnectFailed(f"{where}: {type(exc).__name__} ({exc or 'no detail'})")
    return RemoteError(f"{where}: {type(exc).__name__}")


class _LowLatencyConnection(ClientConnection):
    """A client connection with Nagle off that re-arms ``TCP_QUICKACK`` around every read and write.

    QUICKACK is not sticky (Linux drops back to delayed ACKs on its own), hence re-arming each time; it
    is one cheap ``setsockopt`` and does nothing on platforms without it.
    """

    _sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _TCP_QUICKACK is not None:
            self._sock = sock
            self._quickack()

    def data_received(self, data: bytes) -> None:
        self._quickack()
        super().data_received(data)

    def send_data(self) -> None:
        self._quickack()
        super().send_data()

    def _quickack(self) -> None:
        if self._sock is None or _TCP_QUICKACK is None:
            return
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            self._sock = None


async def open_websocket(
    conn: Connection,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    subprotocols: list[str] | None = None,
    open_timeout_s: float = 10.0,
) -> ClientConnection:
    """Open an authenticated, low-latency websocket to ``path`` below the server's base URL.

    Raises the matching :class:`RemoteError` (never a websockets exception).
    """
    url = conn.ws_url(path, params)
    where = f"websocket {conn.display_url}{path}"
    tls: ssl.SSLContext | None = None
    if url.startswith("wss:"):
        tls = ssl.create_default_context()
        if not conn.verify_tls:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
    headers = conn.ws_headers()
    try:
        return await connect(
            url,
            additional_headers=headers,
            user_agent_header=None if "User-Agent" in headers else "lamplighter",
            subprotocols=[_subprotocol(p) for p in subprotocols or []] or None,
            compression=None,
            open_timeout=open_timeout_s,
            close_timeout=2.0,
            max_size=None,
            ssl=tls,
            create_connection=_LowLatencyConnection,
        )
    except (WebSocketException, OSError, asyncio.TimeoutError) as exc:
        raise websocket_error(exc, where) from exc


def _subprotocol(name: str) -> Any:
    # websockets types subprotocols as a NewType over str.
    return name


async def reopen_websocket(
    open_once: Callable[[float], Awaitable[ClientConnection]],
    *,
    what: str,
    timeout_s: float,
    connect_timeout_s: float,
    gone: Callable[[NotFound], RemoteError],
) -> ClientConnection:
    """Reopen a dropped websocket with backoff within ``timeout_s``; shared by kernels and terminals.

    ``open_once(open_timeout_s)`` makes one attempt. Refused credentials are final; :class:`NotFound`
    means the kernel or terminal is gone and becomes ``gone(exc)``.
    """
    deadline = time.monotonic() + timeout_s
    logger.warning("%s: websocket dropped; reconnecting", what)
    # The pause first lets the server notice the drop and start buffering for our session.
    async for attempt in attempts(RECONNECT_BACKOFF, timeout_s=timeout_s, pause_first=True):
        try:
            ws = await open_once(max(0.1, min(connect_timeout_s, deadline - time.monotonic())))
        except AuthRejected:
            raise
        except NotFound as exc:
            raise gone(exc) from exc
        except RemoteError as exc:
            if attempt.last:
                raise
            logger.info("%s: reconnect failed (%s); retrying", what, exc)
            continue
        logger.info("%s: reconnected", what)
        return ws
    raise AssertionError("attempts() ends with a last attempt, which returns or raises")
