"""The kernel websocket protocol: :class:`KernelSession` owns one kernel's ``/channels`` socket.

Everything that runs code in a Jupyter kernel goes through this class: the notebook runner, the demo,
on-start hooks. The module also owns the two things the terminal runner shares with it: opening a
low-latency websocket with the connection's auth (:func:`open_websocket`) and translating websockets
exceptions onto lamplighter's error tree (:func:`websocket_error`).

Protocol facts this relies on (``research/remote.md`` §2):

- The server offers the ``v1.kernel.websocket.jupyter.org`` binary framing when asked and falls back to
  legacy JSON text frames when the client (or a proxy) picks no subprotocol; both are spoken here.
- A request is finished only when both its ``execute_reply`` (shell) and the IOPub ``status: idle``
  with the same parent have arrived: the two channels share one socket but are not ordered.
- When the last connection to a kernel drops, the server buffers that session's messages and replays
  them to a client that reconnects with the same ``session_id``; so one ``session_id`` is kept for the
  whole life of a :class:`KernelSession` and every reconnect reuses it.
- The server itself sends ``status: restarting`` / ``status: dead`` (no parent) when the kernel process
  dies: the kernel's state is gone and every request in flight fails with :class:`KernelDied`.
- Stock Jupyter leaves Nagle on for its websocket handlers and Linux delays ACKs up to 40 ms, so a reply
  spread over several small frames stalls ~40 ms per request. The client socket disables Nagle and
  re-arms ``TCP_QUICKACK`` on every read and write (one execute: ~48 ms → ~8 ms on loopback).

Each wait has a named budget, computed with ``time.monotonic()``: ``connect`` (opening or re-opening the
websocket), ``kernel_start`` (until the kernel's first ``kernel_info_reply``), ``per_cell`` (one request,
counted from the moment the kernel starts it, so queued requests do not age) and ``output_drain`` (after
the reply, how long to wait for the IOPub ``idle`` before finishing without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal

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
    KernelDied,
    MalformedAnswer,
    RemoteError,
    RemoteTimeout,
)
from lamplighter.remote.connection import Connection

__all__ = [
    "Execution",
    "ExecutionResult",
    "KernelSession",
    "OutputCallback",
    "interrupt_kernel",
    "open_websocket",
    "reopen_websocket",
    "shutdown_kernel",
    "start_kernel",
    "websocket_error",
]

logger = logging.getLogger(__name__)

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
_PROTOCOL_VERSION = "5.3"
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_OUTPUT_TYPES = frozenset(
    {"stream", "display_data", "execute_result", "error", "clear_output", "update_display_data"}
)
_RATE_LIMIT_NOTICE = re.compile(r"IOPub (message|data) rate exceeded")
# nbclient's coalesce_streams rules: text before a carriage return on the same line is overwritten,
# a backspace deletes the character before it.
_CARRIAGE_RETURN = re.compile(r"[^\n]*\r(?=[^\n])")
_BACKSPACE = re.compile(r"[^\n]\b")

OutputCallback = Callable[[str, Mapping[str, Any]], None]
"""Called with ``(msg_type, content)`` for every output message of a request, as it arrives."""


# -- websockets: one place that opens sockets and translates their errors ------------------------


def websocket_error(exc: BaseException, where: str) -> RemoteError:
    """The lamplighter error for a websockets (or socket) failure at ``where``; raise it ``from exc``."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return AuthRejected(f"{where}: the server refused our credentials (HTTP {status})", status=status)
        if status == 404:
            return RemoteError(f"{where}: not found (HTTP 404)", status=status)
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


# -- REST helpers for the kernel's lifecycle ----------------------------------------------------


async def reopen_websocket(
    open_once: Callable[[float], Awaitable[ClientConnection]],
    *,
    what: str,
    timeout_s: float,
    connect_timeout_s: float,
    gone: Callable[[RemoteError], RemoteError],
) -> ClientConnection:
    """Reopen a dropped websocket with backoff within ``timeout_s``; shared by kernels and terminals.

    ``open_once(open_timeout_s)`` makes one attempt. Refused credentials are final; a 404 means the
    kernel or terminal is gone and becomes ``gone(exc)``.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    logger.warning("%s: websocket dropped; reconnecting", what)
    while True:
        # A short pause first lets the server notice the drop and start buffering for our session.
        await asyncio.sleep(delay)
        try:
            ws = await open_once(max(0.1, min(connect_timeout_s, deadline - time.monotonic())))
        except AuthRejected:
            raise
        except RemoteError as exc:
            if exc.status == 404:
                raise gone(exc) from exc
            if time.monotonic() + delay >= deadline:
                raise
            logger.info("%s: reconnect failed (%s); retrying", what, exc)
            delay = min(delay * 2, 2.0)
            continue
        logger.info("%s: reconnected", what)
        return ws


async def start_kernel(conn: Connection, name: str | None = None, *, path: str | None = None) -> str:
    """Start a kernel (``name``, else the server's default) whose working directory is ``path``; its id."""
    body: dict[str, str] = {}
    if name:
        body["name"] = name
    if path is not None:
        body["path"] = path
    model = await conn.request("POST", "api/kernels", json_body=body)
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        raise MalformedAnswer(f"POST {conn.display_url}api/kernels: no kernel id in the answer")
    logger.info("started kernel %s (%s)", model["id"], model.get("name", "default"))
    return str(model["id"])


async def shutdown_kernel(conn: Connection, kernel_id: str, *, retry_s: float = 10.0) -> bool:
    """Shut a kernel down; ``False`` if it was already gone.

    A kernel caught in the middle of an automatic restart makes the server answer 500 (jupyter_server
    2.x trips over its own restart future), so server errors are retried for up to ``retry_s``.
    """
    deadline = time.monotonic() + retry_s
    delay = 0.1
    while True:
        try:
            await conn.request("DELETE", f"api/kernels/{kernel_id}")
        except RemoteError as exc:
            if exc.status == 404:
                return False
            if exc.status is None or exc.status < 500 or time.monotonic() + delay > deadline:
                raise
            logger.info("shutting down kernel %s failed (%s); retrying", kernel_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        logger.info("shut down kernel %s", kernel_id)
        return True


async def interrupt_kernel(conn: Connection, kernel_id: str) -> None:
    """Interrupt a kernel through REST (works for both signal and message interrupt modes)."""
    await conn.request("POST", f"api/kernels/{kernel_id}/interrupt")


# -- frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Message:
    channel: str
    msg_type: str
    parent_id: str | None
    content: dict[str, Any]
    date: str


def _parse_json(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedAnswer(f"kernel websocket: {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedAnswer(f"kernel websocket: {what} is not an object")
    return value


def _decode_frame(frame: str | bytes, v1: bool) -> _Message:
    """One websocket frame → a message (buffers are dropped: no output we keep uses them)."""
    if v1:
        if isinstance(frame, str):
            raise MalformedAnswer("kernel websocket: a text frame on the v1 protocol")
        count = int.from_bytes(frame[:8], "little")
        offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
        if count < 6:
            raise MalformedAnswer("kernel websocket: a v1 frame with too few parts")
        channel = frame[offsets[0] : offsets[1]].decode()
        header = _parse_json(frame[offsets[1] : offsets[2]], "header")
        parent = _parse_json(frame[offsets[2] : offsets[3]], "parent header")
        content = _parse_json(frame[offsets[4] : offsets[5]], "content")
    else:
        if isinstance(frame, bytes):
            # Legacy binary frame (a message with buffers): uint32 count, offsets, JSON, buffers.
            (count,) = struct.unpack("!I", frame[:4])
            starts = struct.unpack("!" + "I" * count, frame[4 : 4 * (count + 1)])
            end = starts[1] if count > 1 else len(frame)
            msg = _parse_json(frame[starts[0] : end], "message")
        else:
            msg = _parse_json(frame, "message")
        channel = str(msg.get("channel", ""))
        header, parent, content = (
            msg.get("header") or {},
            msg.get("parent_header") or {},
            msg.get("content") or {},
        )
    return _Message(
        channel=channel,
        msg_type=str(header.get("msg_type", "")),
        parent_id=parent.get("msg_id"),
        content=content,
        date=str(header.get("date", "")),
    )


def _encode_frame(channel: str, header: dict[str, Any], content: dict[str, Any], v1: bool) -> str | bytes:
    if not v1:
        msg = {"channel": channel, "header": header, "parent_header": {}, "metadata": {}, "content": content}
        return json.dumps(msg, separators=(",", ":"))
    parts = [
        channel.encode(),
        *(json.dumps(p, separators=(",", ":")).encode() for p in (header, {}, {}, content)),
    ]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([len(offsets).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts])


# -- outputs, the way nbclient builds them --------------------------------------------------------

_Outputs = list[dict[str, Any]]


class _DisplayRegistry:
    """Where each ``display_id`` was shown: ``update_display_data`` rewrites all of them, across cells."""

    def __init__(self) -> None:
        self._shown: dict[str, list[tuple[_Outputs, int]]] = {}

    def update(self, display_id: str, content: Mapping[str, Any]) -> None:
        for outputs, index in self._shown.get(display_id, ()):
            outputs[index]["data"] = content.get("data", {})
            outputs[index]["metadata"] = content.get("metadata", {})

    def record(self, display_id: str, outputs: _Outputs, index: int) -> None:
        self._shown.setdefault(display_id, []).append((outputs, index))

    def forget(self, outputs: _Outputs) -> None:
        for display_id, places in self._shown.items():
            self._shown[display_id] = [(o, i) for o, i in places if o is not outputs]


class _OutputArea:
    """Turns one request's IOPub messages into nbformat outputs, with nbclient's and JupyterLab's rules.

    ``clear_output(wait=True)`` clears just before the next output; ``display_id`` updates rewrite every
    earlier display with that id; consecutive stream outputs of the same name are merged, with carriage
    returns and backspaces applied (as JupyterLab shows them and nbclient's ``coalesce_streams`` saves).
    """

    def __init__(self, outputs: _Outputs, displays: _DisplayRegistry) -> None:
        self.outputs = outputs
        self._displays = displays
        self._clear_pending = False

    def handle(self, msg_type: str, content: Mapping[str, Any]) -> None:
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self._clear()
            return
        display_id = None
        if msg_type in ("display_data", "execute_result", "update_display_data"):
            transient = content.get("transient") or {}
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            if display_id:
                self._displays.update(display_id, content)
        if msg_type == "update_display_data":
            return
        output = _output_from(msg_type, content)
        if output is None:
            return
        if self._clear_pending:
            self._clear()
        if output["output_type"] == "stream" and self._merge_stream(output):
            return
        if display_id:
            self._displays.record(display_id, self.outputs, len(self.outputs))
        self.outputs.append(output)

    def _clear(self) -> None:
        self._clear_pending = False
        self.outputs.clear()
        self._displays.forget(self.outputs)

    def _merge_stream(self, output: dict[str, Any]) -> bool:
        last = self.outputs[-1] if self.outputs else None
        if last is None or last.get("output_type") != "stream" or last.get("name") != output["name"]:
            output["text"] = _apply_overwrites(output["text"])
            return False
        # Only the last line of the old text can be touched by a new \r or \b.
        text = last["text"]
        cut = text.rfind("\n") + 1
        last["text"] = text[:cut] + _apply_overwrites(text[cut:] + output["text"])
        return True


def _apply_overwrites(text: str) -> str:
    if "\r" in text:
        text = _CARRIAGE_RETURN.sub("", text)
    if "\b" in text:
        while True:
            shorter = _BACKSPACE.sub("", text)
            if shorter == text:
                break
            text = shorter
    return text


def _output_from(msg_type: str, content: Mapping[str, Any]) -> dict[str, Any] | None:
    """The nbformat v4 output for an IOPub message, or None for messages that are not outputs."""
    if msg_type == "stream":
        return {
            "output_type": "stream",
            "name": content.get("name", "stdout"),
            "text": content.get("text", ""),
        }
    if msg_type == "display_data":
        return {
            "output_type": "display_data",
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
        }
    if msg_type == "execute_result":
        return {
            "output_type": "execute_result",
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
            "execution_count": content.get("execution_count"),
        }
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": list(content.get("traceback", [])),
        }
    return None


# -- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionResult:
    """What one ``execute_request`` produced.

    ``outputs`` is the list the outputs were collected in (nbformat v4 dicts); a later
    ``update_display_data`` in the same session still rewrites a display in it, as in a notebook.
    ``status`` is the kernel's: ``"ok"``, ``"error"`` or ``"aborted"`` (a queued request the kernel
    dropped after an earlier error). ``timing`` holds nbclient's ``metadata.execution`` timestamps.
    """

    status: str
    execution_count: int | None
    outputs: list[dict[str, Any]]
    ename: str | None = None
    evalue: str | None = None
    traceback: tuple[str, ...] = ()
    timing: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Waiter:
    """Something in flight that the reader feeds messages with the matching parent id."""

    def feed(self, msg: _Message) -> None:
        raise NotImplementedError

    def fail(self, exc: RemoteError) -> None:
        raise NotImplementedError


class _ReplyWaiter(_Waiter):
    """A plain request whose shell reply is all we want (``kernel_info_request``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()

    def feed(self, msg: _Message) -> None:
        if msg.channel == "shell" and not self.future.done():
            self.future.set_result(msg.content)

    def fail(self, exc: RemoteError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # mark retrieved: whoever awaits gets it, nobody else needs to


class Execution(_Waiter):
    """One ``execute_request`` in flight; :meth:`result` waits for it under the ``per_cell`` budget."""

    def __init__(
        self,
        session: KernelSession,
        msg_id: str,
        outputs: _Outputs,
        displays: _DisplayRegistry,
        on_output: OutputCallback | None,
    ) -> None:
        self.msg_id = msg_id
        self.outputs = outputs
        self._session = session
        self._area = _OutputArea(outputs, displays)
        self._on_output = on_output
        self._changed = asyncio.Event()
        self._reply: dict[str, Any] | None = None
        self._idle = False
        self._finished = False
        self._error: RemoteError | None = None
        self._execution_count: int | None = None
        self._timing: dict[str, str] = {}
        self.started_at: float | None = None
        self._drain_handle: asyncio.TimerHandle | None = None

    @property
    def started(self) -> bool:
        """Whether the kernel has begun this request (it may still be queued behind others)."""
        return self.started_at is not None

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, msg: _Message) -> None:
        if self._finished:
            return
        if msg.channel == "iopub":
            self._feed_iopub(msg)
        elif msg.channel == "shell" and msg.msg_type == "execute_reply":
            self._reply = msg.content
            self._timing["shell.execute_reply"] = msg.date
            count = msg.content.get("execution_count")
            if isinstance(count, int):
                self._execution_count = count
            self._mark_started()
            if self._idle:
                self._finish()
            else:
                self._drain_handle = asyncio.get_running_loop().call_later(
                    self._session.output_drain_timeout_s, self._drain_expired
                )

    def _feed_iopub(self, msg: _Message) -> None:
        msg_type = msg.msg_type
        if msg_type == "status":
            state = msg.content.get("execution_state")
            if state == "busy":
                self._timing["iopub.status.busy"] = msg.date
                self._mark_started()
            elif state == "idle":
                self._timing["iopub.status.idle"] = msg.date
                self._idle = True
                if self._reply is not None:
                    self._finish()
            return
        if msg_type == "execute_input":
            self._timing["iopub.execute_input"] = msg.date
            count = msg.content.get("execution_count")
            if isinstance(count, int):
                self._execution_count = count
            self._mark_started()
            return
        if msg_type not in _OUTPUT_TYPES:
            return
        if msg_type == "stream" and _RATE_LIMIT_NOTICE.search(str(msg.content.get("text", ""))):
            logger.warning(
                "the server dropped output of request %s: %s", self.msg_id, msg.content["text"].strip()
            )
        self._area.handle(msg_type, msg.content)
        if self._on_output is not None:
            self._on_output(msg_type, msg.content)

    def _mark_started(self) -> None:
        # The waiter wakes only when it has something to do: a per_cell clock to start, or the end.
        if self.started_at is None:
            self.started_at = time.monotonic()
            self._changed.set()

    def _drain_expired(self) -> None:
        if not self._finished:
            logger.warning(
                "no IOPub idle within %.1f s of the reply to %s (output_drain); later output may be missing",
                self._session.output_drain_timeout_s,
                self.msg_id,
            )
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self._session._forget(self.msg_id)
        self._changed.set()

    def fail(self, exc: RemoteError) -> None:
        if self._finished:
            return
        self._error = exc
        self._finish()

    def discard(self) -> None:
        """Stop collecting this request's messages (the kernel may still run or abort it)."""
        self.fail(RemoteError(f"request {self.msg_id} was discarded"))

    def _result(self) -> ExecutionResult:
        reply = self._reply or {}
        status = str(reply.get("status", "ok" if self._reply is not None else "error"))
        error = next((o for o in reversed(self.outputs) if o.get("output_type") == "error"), None)
        ename = evalue = None
        traceback: tuple[str, ...] = ()
        if status == "error":
            source = reply if "ename" in reply else (error or {})
            ename = str(source.get("ename", "")) or "Error"
            evalue = str(source.get("evalue", ""))
            traceback = tuple(str(line) for line in source.get("traceback", []))
        return ExecutionResult(
            status=status,
            execution_count=self._execution_count,
            outputs=self.outputs,
            ename=ename,
            evalue=evalue,
            traceback=traceback,
            timing=dict(self._timing),
        )

    async def result(
        self, *, timeout_s: float | None = None, deadline: float | None = None
    ) -> ExecutionResult:
        """Wait for the reply and the IOPub idle.

        ``timeout_s`` is the ``per_cell`` budget and counts from when the kernel starts this request (a
        request queued behind others does not age); ``deadline`` is an absolute ``time.monotonic()``
        limit, such as a whole run's. When either passes, the kernel is interrupted, given a short grace
        to answer, and :class:`RemoteTimeout` is raised; whatever output arrived stays in :attr:`outputs`.
        """
        cell_deadline: float | None = None
        while not self._finished:
            if timeout_s is not None and cell_deadline is None and self.started_at is not None:
                cell_deadline = self.started_at + timeout_s
            limits = [limit for limit in (cell_deadline, deadline) if limit is not None]
            now = time.monotonic()
            if limits and min(limits) <= now:
                per_cell = cell_deadline is not None and cell_deadline <= now
                await self._interrupt_after_timeout()
                if per_cell:
                    raise RemoteTimeout(f"ran past the per-cell timeout of {timeout_s:g} s; interrupted it")
                raise RemoteTimeout("ran past the run's timeout; interrupted it")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(limits) - now if limits else None)
        if self._error is not None:
            raise self._error
        return self._result()

    async def _interrupt_after_timeout(self) -> None:
        logger.warning("request %s ran out of time; interrupting the kernel", self.msg_id)
        try:
            await self._session.interrupt()
        except RemoteError as exc:
            logger.warning("could not interrupt the kernel: %s", exc)
        grace_deadline = time.monotonic() + self._session.interrupt_grace_s
        while not self._finished and time.monotonic() < grace_deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), grace_deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        if not self._finished:
            self.fail(RemoteTimeout("abandoned after an interrupt the kernel did not answer"))


# -- the session -----------------------------------------------------------------------------------


class KernelSession:
    """One kernel's channels websocket, with one client ``session_id`` for its whole life.

    Use as ``async with KernelSession(conn, kernel_id) as ks: result = await ks.execute("1 + 1")``.
    The session never starts or stops the kernel: see :func:`start_kernel` / :func:`shutdown_kernel`.
    A dropped socket is reopened with the same ``session_id`` (the server replays what was buffered)
    for up to ``reconnect_timeout_s``; a kernel that died or restarted fails every request in flight,
    and every later one, with :class:`KernelDied`.

    ``protocol`` is ``"auto"`` (ask for the v1 binary framing, accept legacy JSON if the server picks
    none), ``"v1"`` or ``"legacy"`` (ask for no subprotocol; for proxies that mangle them).
    """

    def __init__(
        self,
        conn: Connection,
        kernel_id: str,
        *,
        session_id: str | None = None,
        protocol: Literal["auto", "v1", "legacy"] = "auto",
        connect_timeout_s: float = 10.0,
        kernel_start_timeout_s: float = 60.0,
        output_drain_timeout_s: float = 4.0,
        interrupt_grace_s: float = 5.0,
        reconnect_timeout_s: float = 30.0,
        username: str = "lamplighter",
    ) -> None:
        self.conn = conn
        self.kernel_id = kernel_id
        self.session_id = session_id or uuid.uuid4().hex
        self.protocol = protocol
        self.connect_timeout_s = connect_timeout_s
        self.kernel_start_timeout_s = kernel_start_timeout_s
        self.output_drain_timeout_s = output_drain_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.username = username
        self.kernel_info: dict[str, Any] = {}
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._v1 = False
        self._connected = asyncio.Event()
        self._pending: dict[str, _Waiter] = {}
        self._displays = _DisplayRegistry()
        self._broken: RemoteError | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"KernelSession({self.conn.display_url!r}, kernel={self.kernel_id})"

    @property
    def language(self) -> str:
        """The kernel's language (``language_info.name`` of its kernel_info), e.g. ``"python"``."""
        return str((self.kernel_info.get("language_info") or {}).get("name", ""))

    @property
    def implementation(self) -> str:
        """The kernel implementation from kernel_info (``"ipython"`` for ipykernel)."""
        return str(self.kernel_info.get("implementation", ""))

    @property
    def subprotocol(self) -> str:
        """The framing in use: ``"v1"`` or ``"legacy"``."""
        return "v1" if self._v1 else "legacy"

    async def __aenter__(self) -> KernelSession:
        budget_end = time.monotonic() + self.kernel_start_timeout_s
        # The server holds the handshake until the kernel is alive and has answered its own
        # kernel_info, so the first open runs under the kernel_start budget, not connect.
        self._ws = await self._open(max(self.connect_timeout_s, self.kernel_start_timeout_s))
        self._connected.set()
        self._reader = asyncio.create_task(self._read_forever(), name=f"kernel-reader-{self.kernel_id[:8]}")
        try:
            waiter = _ReplyWaiter(asyncio.get_running_loop())
            await self._send_request("kernel_info_request", {}, waiter)
            remaining = max(0.1, budget_end - time.monotonic())
            try:
                self.kernel_info = await asyncio.wait_for(waiter.future, remaining)
            except asyncio.TimeoutError:
                raise RemoteTimeout(
                    f"kernel {self.kernel_id} did not answer kernel_info within "
                    f"{self.kernel_start_timeout_s:g} s (kernel_start)"
                ) from None
        except BaseException:
            await self._close()
            raise
        logger.debug("%r: connected (%s framing)", self, self.subprotocol)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        self._closing = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        self._fail_all(RemoteError(f"{self!r} is closed"))

    async def _open(self, open_timeout_s: float) -> ClientConnection:
        subprotocols = [] if self.protocol == "legacy" else [V1_SUBPROTOCOL]
        ws = await open_websocket(
            self.conn,
            f"api/kernels/{self.kernel_id}/channels",
            params={"session_id": self.session_id},
            subprotocols=subprotocols,
            open_timeout_s=open_timeout_s,
        )
        self._v1 = ws.subprotocol == V1_SUBPROTOCOL
        if self.protocol == "v1" and not self._v1:
            await ws.close()
            raise MalformedAnswer(
                f"{self.conn.display_url}: the server does not speak the v1 kernel protocol"
            )
        return ws

    # -- reading

    async def _read_forever(self) -> None:
        while True:
            ws = self._ws
            if ws is None:
                return
            try:
                async for frame in ws:
                    self._dispatch(frame)
            except ConnectionClosed:
                pass
            except RemoteError as exc:
                self._break(exc)
                return
            if self._closing or self._broken is not None:
                return
            self._connected.clear()
            try:
                self._ws = await self._reopen()
            except RemoteError as exc:
                self._break(exc)
                return
            self.reconnects += 1
            self._connected.set()

    async def _reopen(self) -> ClientConnection:
        """Reconnect with the same session_id (the server replays what it buffered for it)."""

        def gone(exc: RemoteError) -> RemoteError:
            return KernelDied(f"kernel {self.kernel_id} is gone (HTTP 404 on reconnect)")

        return await reopen_websocket(
            self._open, what=repr(self), timeout_s=self.reconnect_timeout_s,
            connect_timeout_s=self.connect_timeout_s, gone=gone,
        )  # fmt: skip

    def _dispatch(self, frame: str | bytes) -> None:
        msg = _decode_frame(frame, self._v1)
        if msg.parent_id is not None:
            waiter = self._pending.get(msg.parent_id)
            if waiter is not None:
                try:
                    waiter.feed(msg)
                except Exception as exc:
                    # A caller's output callback raised: that request fails, the session lives on.
                    logger.exception("output handling failed for request %s", msg.parent_id)
                    waiter.fail(RemoteError(f"output handling failed: {type(exc).__name__}: {exc}"))
                return
        if msg.channel == "iopub" and msg.msg_type == "status":
            state = msg.content.get("execution_state")
            if state in ("restarting", "dead"):
                self._break(KernelDied(f"kernel {self.kernel_id} died ({state}); its state is lost"))

    def _break(self, exc: RemoteError) -> None:
        if self._broken is None:
            self._broken = exc
            logger.warning("%r: %s", self, exc)
        self._connected.set()  # wake senders so they see the error
        self._fail_all(exc)

    def _fail_all(self, exc: RemoteError) -> None:
        for waiter in list(self._pending.values()):
            waiter.fail(exc)
        self._pending.clear()

    def _forget(self, msg_id: str) -> None:
        self._pending.pop(msg_id, None)

    # -- writing

    def _header(self, msg_type: str) -> dict[str, Any]:
        return {
            "msg_id": uuid.uuid4().hex,
            "session": self.session_id,
            "username": self.username,
            # The protocol wants a send date in every header; this is not a decision clock.
            "date": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "msg_type": msg_type,
            "version": _PROTOCOL_VERSION,
        }

    async def _send_request(self, msg_type: str, content: dict[str, Any], waiter: _Waiter) -> str:
        header = self._header(msg_type)
        msg_id = str(header["msg_id"])
        await self._send_request_for(msg_id, header, content, waiter)
        return msg_id

    async def _send_request_for(
        self, msg_id: str, header: dict[str, Any], content: dict[str, Any], waiter: _Waiter
    ) -> None:
        # Registered before sending: the first IOPub message can beat the send's return.
        self._pending[msg_id] = waiter
        try:
            await self._send("shell", header, content)
        except BaseException:
            self._pending.pop(msg_id, None)
            raise

    async def _send(self, channel: str, header: dict[str, Any], content: dict[str, Any]) -> None:
        while True:
            if self._broken is not None:
                raise self._broken
            if self._closing:
                raise RemoteError(f"{self!r} is closed")
            await self._connected.wait()
            ws = self._ws
            if self._broken is not None or ws is None:
                continue
            try:
                await ws.send(_encode_frame(channel, header, content, self._v1))
                return
            except ConnectionClosed:
                # The reader reconnects; wait for it and send again.
                if self._ws is ws:
                    self._connected.clear()

    # -- public API

    async def submit(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
        outputs: list[dict[str, Any]] | None = None,
        on_output: OutputCallback | None = None,
    ) -> Execution:
        """Send an ``execute_request``; return once it is on the wire (to keep the kernel's queue fed).

        Wait for it with :meth:`Execution.result`. Messages for it are collected from now on, so
        several requests may be in flight; the kernel runs them in order.
        """
        if self._broken is not None:
            raise self._broken
        header = self._header("execute_request")
        msg_id = str(header["msg_id"])
        execution = Execution(self, msg_id, outputs if outputs is not None else [], self._displays, on_output)
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": stop_on_error,
        }
        await self._send_request_for(msg_id, header, content, execution)
        return execution

    async def execute(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
        outputs: list[dict[str, Any]] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` and wait for it (``timeout_s``: the ``per_cell`` budget; None waits forever).

        A cell that raises is a normal result (``status == "error"``); only transport failures,
        timeouts and a dead kernel raise.
        """
        execution = await self.submit(
            code,
            silent=silent,
            store_history=store_history,
            stop_on_error=stop_on_error,
            outputs=outputs,
            on_output=on_output,
        )
        return await execution.result(timeout_s=timeout_s)

    async def interrupt(self) -> None:
        """Interrupt whatever the kernel is running (REST, so it works for signal-mode kernels too)."""
        await interrupt_kernel(self.conn, self.kernel_id)
