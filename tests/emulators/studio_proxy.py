"""Studio's front door for the emulator: the login page, the app-status page and a cookie-checking proxy.

Real Studio puts every app behind its own proxy: SageMaker Distribution starts Jupyter with
``--ServerApp.token=''`` (aws/sagemaker-distribution ``start-jupyter-server``), so nothing but Studio's
session cookie keeps strangers out. This proxy does the same on one 127.0.0.1 port: a request under an
app's base path (``/jupyterlab/default/``, ``/jupyter/default/``) is passed to the app that the
``studio-session`` cookie's login was made for, byte for byte (websockets included); without a valid
cookie it gets a 403. Everything else (``/auth``, ``/app``, ``/studio/home``) is answered by the
emulator through :class:`FrontDoor`.

The cookie is checked on the first request of each TCP connection; the rest of a proxied connection
goes to the same app, which is how a keep-alive client that presented the cookie behaves anyway.
Answers the proxy makes itself close their connection, so the next request is checked afresh.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Protocol

__all__ = ["FrontDoor", "Local", "StudioProxy", "ToApp"]

_MAX_HEAD = 65536


@dataclass(frozen=True)
class Local:
    """An answer the front door makes itself."""

    status: int
    body: str
    content_type: str = "text/html"
    headers: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class ToApp:
    """Pass the request to the app's Jupyter server on this port."""

    port: int


class FrontDoor(Protocol):
    def front(self, method: str, target: str, cookies: dict[str, str]) -> Local | ToApp: ...


_REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    502: "Bad Gateway",
}


class StudioProxy:
    """Listens on a free 127.0.0.1 port (``url``); ``close()`` stops it and drops its connections."""

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="studio-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in sockets:
            _close(sock)
        self._thread.join(10)

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._sockets.add(sock)
            return True

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._track(client):
                _close(client)
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = _read_head(client)
            if head is None:
                return
            method, target, cookies = _parse_head(head)
            route = self._door.front(method, target, cookies)
            if isinstance(route, Local):
                _answer(client, route)
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", route.port), timeout=10)
            except OSError:
                _answer(client, Local(502, "<html><body>The app is not answering.</body></html>"))
                return
            upstream.settimeout(None)
            if not self._track(upstream):
                _close(upstream)
                return
            upstream.sendall(head)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(60)
            self._forget(upstream)
        except OSError:
            pass
        finally:
            self._forget(client)


def _read_head(sock: socket.socket) -> bytes | None:
    """The request up to the end of its headers, plus whatever body bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > _MAX_HEAD:
            return None
    return data


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rpartition(" ")[0] or rest
    cookies: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.strip())
            except CookieError:
                continue
            cookies.update({key: morsel.value for key, morsel in jar.items()})
    return method, target, cookies


def _answer(sock: socket.socket, answer: Local) -> None:
    body = answer.body.encode()
    lines = [
        f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Status')}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes one way until either side closes, then close the other's writing half."""
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            sink.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
