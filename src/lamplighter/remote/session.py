"""A session on one kernel's ``/channels`` websocket: :class:`KernelSession`, its requests and their waits.

Everything that runs code in a Jupyter kernel goes through this class: the notebook runner, the demo,
on-start hooks. The socket comes from :mod:`lamplighter.remote.transport`, the wire format from
:mod:`lamplighter.remote.frames`, the outputs' rules from :mod:`lamplighter.remote.outputs`; this module
matches messages to their requests and decides when a request is done.

Protocol facts this relies on (``research/remote.md`` §2):

- A request is finished only when both its ``execute_reply`` (shell) and the IOPub ``status: idle``
  with the same parent have arrived: the two channels share one socket but are not ordered.
- When the last connection to a kernel drops, the server buffers that session's messages and replays
  them to a client that reconnects with the same ``session_id``; so one ``session_id`` is kept for the
  whole life of a :class:`KernelSession` and every reconnect reuses it.
- The server itself sends ``status: restarting`` / ``status: dead`` (no parent) when the kernel process
  dies: the kernel's state is gone and every request in flight fails with :class:`KernelDied`.
- A restart someone asks for (``POST /api/kernels/{id}/restart``, JupyterLab's button) gets no such
  message: the old kernel broadcasts its ``shutdown_reply`` (``restart: true``), the running request's
  ``execute_reply`` never comes, and the new process greets with ``iopub_welcome`` and ``status:
  starting`` under a new ``header.session``. Any of these ends the session with :class:`KernelDied`.
- When the kernel dies, the requests it had already finished are not failed with it: one whose reply
  came, and any sent before the last one the kernel had started (it runs them in order, and IOPub is
  ordered), keep their results even if their IOPub ``idle`` was lost with the process. Only the
  request that was running, and those queued behind it, fail: the right cell is blamed.

Each wait has a named budget, computed with ``time.monotonic()``: ``connect`` (opening or re-opening the
websocket), ``kernel_start`` (until the kernel's first ``kernel_info_reply``), ``per_cell`` (one request,
counted from the moment the kernel starts it, so queued requests do not age) and ``output_drain`` (after
the reply, how long to wait for the IOPub ``idle`` before finishing without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from lamplighter.errors import KernelDied, MalformedAnswer, NotFound, RemoteError, RemoteTimeout
from lamplighter.remote.connection import Connection
from lamplighter.remote.frames import V1_SUBPROTOCOL, Message, decode_frame, encode_frame, new_header
from lamplighter.remote.kernels import interrupt_kernel
from lamplighter.remote.outputs import (
    OUTPUT_TYPES,
    DisplayRegistry,
    OutputArea,
    Outputs,
    is_rate_limit_notice,
)
from lamplighter.remote.stdin import InputAnswerer
from lamplighter.remote.transport import open_websocket, reopen_websocket
from lamplighter.remote.widgets import WidgetRegistry

__all__ = ["Execution", "ExecutionResult", "KernelSession", "OutputCallback"]

_COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})

logger = logging.getLogger(__name__)

OutputCallback = Callable[[str, Mapping[str, Any]], None]
"""Called with ``(msg_type, content)`` for every output message of a request, as it arrives."""


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

    def feed(self, msg: Message) -> None:
        raise NotImplementedError

    def fail(self, exc: RemoteError) -> None:
        raise NotImplementedError


class _ReplyWaiter(_Waiter):
    """A plain request whose shell reply is all we want (``kernel_info_request``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()

    def feed(self, msg: Message) -> None:
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
        outputs: Outputs,
        displays: DisplayRegistry,
        on_output: OutputCallback | None,
        stdin: InputAnswerer | None = None,
    ) -> None:
        self.msg_id = msg_id
        self.stdin = stdin
        self._stdin_tasks: set[asyncio.Task[None]] = set()
        self.outputs = outputs
        self._session = session
        self._area = OutputArea(outputs, displays)
        self._on_output = on_output
        self._changed = asyncio.Event()
        self._reply: dict[str, Any] | None = None
        self._idle = False
        self._finished = False
        self._error: RemoteError | None = None
        self._execution_count: int | None = None
        self._timing: dict[str, str] = {}
        self.started_at: float | None = None
        self._wake_on_start = False
        self._drain_handle: asyncio.TimerHandle | None = None
        self._survived = False  # finished by the kernel, which then died: see finish_before_death

    @property
    def started(self) -> bool:
        """Whether the kernel has begun this request (it may still be queued behind others)."""
        return self.started_at is not None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def execution_count(self) -> int | None:
        """The count the kernel gave this request so far (known from ``execute_input``, before the reply)."""
        return self._execution_count

    @property
    def timing(self) -> dict[str, str]:
        """nbclient's ``metadata.execution`` timestamps seen so far."""
        return dict(self._timing)

    def feed(self, msg: Message) -> None:
        if self._finished:
            return
        if msg.channel == "iopub":
            self._feed_iopub(msg)
        elif msg.channel == "stdin" and msg.msg_type == "input_request":
            task = asyncio.create_task(self._answer_input(msg.content), name=f"stdin-{self.msg_id}")
            self._stdin_tasks.add(task)
            task.add_done_callback(self._stdin_tasks.discard)
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

    def _feed_iopub(self, msg: Message) -> None:
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
        if msg_type not in OUTPUT_TYPES:
            return
        if is_rate_limit_notice(msg_type, msg.content):
            logger.warning(
                "the server dropped output of request %s: %s", self.msg_id, msg.content["text"].strip()
            )
        hook = self._session.widgets.hook_for(self.msg_id) if msg_type != "update_display_data" else None
        if hook is not None:
            # Inside `with out:`: the widget's, not the cell's; and, as under papermill (which logs
            # only what nbclient puts in the cell), not the live output's either.
            hook.output(msg_type, msg.content)
            return
        self._area.handle(msg_type, msg.content)
        if self._on_output is not None:
            self._on_output(msg_type, msg.content)

    async def _answer_input(self, request: Mapping[str, Any]) -> None:
        prompt, password = str(request.get("prompt", "")), bool(request.get("password"))
        value = None if self.stdin is None else await self.stdin.answer(prompt, password=password)
        if value is None:
            # The kernel would wait forever: interrupting it fails the cell with KeyboardInterrupt.
            logger.warning("no answer for the cell's input %r; interrupting the kernel", prompt)
            try:
                await self._session.interrupt()
            except RemoteError as exc:
                logger.warning("could not interrupt the kernel: %s", exc)
            return
        try:
            await self._session._send("stdin", self._session._header("input_reply"), {"value": value})
        except RemoteError as exc:
            logger.warning("could not answer the cell's input request: %s", exc)

    def _mark_started(self) -> None:
        # The waiter wakes only when it has something to do: a per_cell clock to start, or the end
        # (one event-loop round trip less per cell when there is no per-cell budget).
        if self.started_at is None:
            self.started_at = time.monotonic()
            if self._wake_on_start:
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

    @property
    def replied(self) -> bool:
        return self._reply is not None

    def finish_before_death(self) -> None:
        """The kernel had finished this request when it died: end it with what arrived (the IOPub
        ``idle``, maybe the reply, went with the process)."""
        if not self._finished:
            self._survived = True
            self._finish()

    def discard(self) -> None:
        """Stop collecting this request's messages (the kernel may still run or abort it)."""
        self.fail(RemoteError(f"request {self.msg_id} was discarded"))

    def _result(self) -> ExecutionResult:
        reply = self._reply or {}
        error = next((o for o in reversed(self.outputs) if o.get("output_type") == "error"), None)
        if self._reply is None and self._survived:
            status = "error" if error is not None else "ok"
        else:
            status = str(reply.get("status", "ok" if self._reply is not None else "error"))
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
        self._wake_on_start = timeout_s is not None
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
    The session never starts or stops the kernel: see :mod:`lamplighter.remote.kernels`.
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
        self._displays = DisplayRegistry()
        self.widgets = WidgetRegistry(self._send_comm)
        """Widget models seen on this kernel, and the Output widgets capturing requests."""
        self._comm_tasks: set[asyncio.Task[None]] = set()
        self._broken: RemoteError | None = None
        self._kernel_process = ""  # header.session of the kernel's own replies: one per kernel process
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
        # Widget updates still queued are moot once the socket goes.
        for task in list(self._comm_tasks):
            task.cancel()
        await asyncio.gather(*self._comm_tasks, return_exceptions=True)
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

        def gone(exc: NotFound) -> RemoteError:
            return KernelDied(f"kernel {self.kernel_id} is gone (HTTP 404 on reconnect)")

        return await reopen_websocket(
            self._open, what=repr(self), timeout_s=self.reconnect_timeout_s,
            connect_timeout_s=self.connect_timeout_s, gone=gone,
        )  # fmt: skip

    def _dispatch(self, frame: str | bytes) -> None:
        msg = decode_frame(frame, self._v1)
        if msg.channel == "iopub" and msg.msg_type in _COMM_TYPES:
            # Widget traffic belongs to the kernel, not to one request: a model outlives its cell.
            self.widgets.handle(msg.msg_type, msg.content, msg.buffers)
            return
        replaced = self._replaced(msg)
        if replaced is not None:
            self._break(replaced)
            return
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

    def _replaced(self, msg: Message) -> KernelDied | None:
        """The error to end the session with when ``msg`` shows the kernel process was restarted or
        shut down by someone else (see the module docstring); None when it shows nothing of the kind."""
        if self._broken is not None or self._closing:
            return None
        if msg.parent_id is not None and msg.parent_id in self._pending and msg.session:
            # A message for one of our requests comes from the kernel itself.
            if not self._kernel_process:
                self._kernel_process = msg.session
            elif msg.session != self._kernel_process:
                return self._restarted()
        if msg.channel != "iopub" or not self._kernel_process:
            return None
        if msg.msg_type == "shutdown_reply" and msg.parent_id not in self._pending:
            # Someone else's shutdown request, which a restart begins with.
            if msg.content.get("restart"):
                return self._restarted()
            return KernelDied(f"kernel {self.kernel_id} was shut down by someone else; its state is lost")
        if msg.msg_type == "status" and msg.content.get("execution_state") == "starting":
            return self._restarted()
        if msg.msg_type == "iopub_welcome" and msg.session and msg.session != self._kernel_process:
            return self._restarted()
        return None

    def _restarted(self) -> KernelDied:
        return KernelDied(f"kernel {self.kernel_id} was restarted; its state is lost", restarted=True)

    def _break(self, exc: RemoteError) -> None:
        if self._broken is None:
            self._broken = exc
            logger.warning("%r: %s", self, exc)
        self._connected.set()  # wake senders so they see the error
        if isinstance(exc, KernelDied):
            self._spare_what_the_kernel_finished()
        self._fail_all(exc)

    def _spare_what_the_kernel_finished(self) -> None:
        executions = [w for w in self._pending.values() if isinstance(w, Execution)]
        # In submission order; the kernel runs them in that order.
        last_started = max((i for i, e in enumerate(executions) if e.started), default=-1)
        for i, execution in enumerate(executions):
            if i < last_started or execution.replied:
                execution.finish_before_death()

    def _fail_all(self, exc: RemoteError) -> None:
        for waiter in list(self._pending.values()):
            waiter.fail(exc)
        self._pending.clear()

    def _forget(self, msg_id: str) -> None:
        self._pending.pop(msg_id, None)

    # -- writing

    def _send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        """Send a widget ``comm_msg`` to the kernel, as a front end does (in the background)."""

        async def send() -> None:
            try:
                await self._send("shell", self._header("comm_msg"), {"comm_id": comm_id, "data": data})
            except RemoteError as exc:
                logger.warning("could not update widget %s in the kernel: %s", comm_id, exc)

        task = asyncio.get_running_loop().create_task(send(), name=f"comm-{comm_id[:8]}")
        self._comm_tasks.add(task)
        task.add_done_callback(self._comm_tasks.discard)

    def _header(self, msg_type: str) -> dict[str, Any]:
        return new_header(msg_type, session_id=self.session_id, username=self.username)

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
                await ws.send(encode_frame(channel, header, content, self._v1))
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
        stdin: InputAnswerer | None = None,
    ) -> Execution:
        """Send an ``execute_request``; return once it is on the wire (to keep the kernel's queue fed).

        Wait for it with :meth:`Execution.result`. Messages for it are collected from now on, so
        several requests may be in flight; the kernel runs them in order. With ``stdin``, the cell's
        ``input()`` and ``getpass()`` are answered by it; without, they raise ``StdinNotImplementedError``.
        """
        if self._broken is not None:
            raise self._broken
        header = self._header("execute_request")
        msg_id = str(header["msg_id"])
        execution = Execution(
            self, msg_id, outputs if outputs is not None else [], self._displays, on_output, stdin
        )
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": stdin is not None,
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
