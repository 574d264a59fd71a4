"""Running shell commands in a Jupyter terminal: :class:`TerminalSession` and :func:`run_shell`.

A Jupyter terminal is a pty behind a websocket (``/terminals/websocket/{name}``, terminado's JSON arrays:
``["stdin", s]`` in, ``["setup", {}]``, ``["stdout", s]`` and ``["disconnect", 1]`` out). It has no notion
of a command, its end or its exit status, so this module adds them:

- Echo and bracketed paste are turned off once per session (``stty -echo``; ``bind``), and every line we
  type starts with a space so an ``ignorespace`` history skips it.
- Each command runs as ``( eval CMD ) < /dev/null`` (a subshell: a fork, no exec, ~3 ms cheaper than
  ``bash -c``; ``exit`` or ``cd`` in it cannot touch the terminal's shell) between two markers made from
  a fresh nonce:
  ``__LLS_<nonce>__`` before, ``__LLE_<nonce>:<status>__`` after. The markers are printed with
  ``printf '%s%s' '__LLE_' '<nonce>'``, so the command line itself (should the pty echo it) never contains
  a whole marker; only the shell running it can produce one. The output is exactly what lies between
  the markers, ANSI escapes stripped and ``\\r\\n`` turned into ``\\n``.
- The server replays the terminal's last 1000 chunks to every new connection, so old markers come back:
  only the current nonce counts, and after a reconnect the replay is parsed again and only output not
  yet delivered is passed on.
- A script is uploaded through the contents API (``lamplighter-<nonce>.sh`` in the server root), run
  with ``bash``, and deleted afterwards.

The terminal's shell must be POSIX-like (bash, zsh, sh: ``printf``, ``eval``, ``$?``); scripts need ``bash``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from lamplighter.errors import ConfigError, MalformedAnswer, NotFound, RemoteError, RemoteTimeout
from lamplighter.remote.connection import Connection
from lamplighter.remote.transport import open_websocket, reopen_websocket

__all__ = ["ShellResult", "TerminalSession", "run_script", "run_shell", "strip_ansi"]

logger = logging.getLogger(__name__)

# CSI, OSC (ended by BEL or ST), DCS/SOS/PM/APC strings, and the two-byte escapes.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[ -/]*[0-~]"
)
_ESCAPE_HOLD_MAX = 4096  # an unfinished escape longer than this is not an escape: let it through
_PREPARE = " stty -echo 2>/dev/null; bind 'set enable-bracketed-paste off' 2>/dev/null\r"
_NAME = re.compile(r"^\w+$")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves, titles, bracketed paste)."""
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class ShellResult:
    """A finished command: its exit status and its output (stdout and stderr merged, as a pty does)."""

    exit_code: int
    output: str


class _MarkerParser:
    """Finds one command's output and exit status in a terminal's output stream (no I/O here)."""

    def __init__(self, nonce: str) -> None:
        self._start = f"__LLS_{nonce}__\n"
        self._end_prefix = f"__LLE_{nonce}:"
        self._end = re.compile(re.escape(self._end_prefix) + r"(\d+)__")
        self._raw = ""  # received, not yet cleaned (an escape sequence or "\r" cut at the chunk end)
        self._clean = ""  # cleaned, not yet consumed
        self._started = False
        self._output: list[str] = []
        self._delivered = 0  # characters of output already handed to the caller
        self._seen_since_reset = 0
        self._before_reset = ""
        self.exit_code: int | None = None

    @property
    def output(self) -> str:
        return "".join(self._output)

    def reset(self) -> None:
        """A new connection replays the terminal's recent output: parse it from scratch."""
        self._before_reset = self.output
        self._raw = self._clean = ""
        self._started = False
        self._output = []
        self._seen_since_reset = 0

    def feed(self, chunk: str) -> str:
        """Take one stdout chunk; return the output that became known (not delivered before)."""
        if self.exit_code is not None:
            return ""
        self._raw += chunk
        ready = self._take_ready()
        self._clean += strip_ansi(ready).replace("\r\n", "\n")
        if not self._started:
            at = self._clean.find(self._start)
            if at < 0:
                ended = self._end.search(self._clean)
                if ended:
                    # The replay after a reconnect no longer reaches back to our start marker.
                    logger.warning(
                        "the terminal's replay lost the start of the output; some of it is missing"
                    )
                    self._output = [self._before_reset]
                    self.exit_code = int(ended.group(1))
                self._clean = self._clean[-len(self._start) :]
                return ""
            self._clean = self._clean[at + len(self._start) :]
            self._started = True
        match = self._end.search(self._clean)
        if match:
            text, self._clean = self._clean[: match.start()], ""
            self.exit_code = int(match.group(1))
        else:
            keep = self._possible_marker_start()
            text, self._clean = self._clean[:keep], self._clean[keep:]
        return self._deliver(text)

    def _take_ready(self) -> str:
        """The part of the raw text that cannot change meaning with the next chunk."""
        raw = self._raw
        hold = len(raw)
        escape = raw.rfind("\x1b")
        if escape >= 0 and len(raw) - escape < _ESCAPE_HOLD_MAX and not _ANSI.match(raw, escape):
            hold = escape
        elif raw.endswith("\r"):
            hold = len(raw) - 1
        self._raw = raw[hold:]
        return raw[:hold]

    def _possible_marker_start(self) -> int:
        """Where a marker may be starting at the end of the clean text (hold that back)."""
        clean, prefix = self._clean, self._end_prefix
        at = clean.rfind(prefix)
        if at >= 0 and re.fullmatch(r"\d*_?", clean[at + len(prefix) :]):
            return at
        for size in range(min(len(prefix), len(clean)), 0, -1):
            if clean.endswith(prefix[:size]):
                return len(clean) - size
        return len(clean)

    def _deliver(self, text: str) -> str:
        self._output.append(text)
        start = self._seen_since_reset
        self._seen_since_reset += len(text)
        if self._seen_since_reset <= self._delivered:
            return ""
        new = text[max(0, self._delivered - start) :]
        self._delivered = self._seen_since_reset
        return new


class TerminalSession:
    """One Jupyter terminal and a websocket to it; runs commands one after another.

    ``name=None`` creates a terminal that is deleted on exit. A ``name`` reuses that terminal (creating it
    if it does not exist) and leaves it running afterwards, so several runs can share one shell.
    """

    def __init__(
        self,
        conn: Connection,
        name: str | None = None,
        *,
        connect_timeout_s: float = 10.0,
        reconnect_timeout_s: float = 30.0,
    ) -> None:
        if name is not None and not _NAME.match(name):
            raise ConfigError(f"terminal name: {name!r} must be letters, digits and underscores")
        self.conn = conn
        self.name = name or ""
        self.owned = name is None
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._ws: ClientConnection | None = None
        self._prepared = False

    def __repr__(self) -> str:
        return f"TerminalSession({self.conn.display_url!r}, name={self.name!r})"

    async def __aenter__(self) -> TerminalSession:
        await self._ensure_terminal()
        try:
            self._ws = await self._open()
        except BaseException:
            await self._delete_if_owned()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ws, self._ws = self._ws, None
        try:
            if ws is not None:
                await ws.close()
        finally:
            await self._delete_if_owned()

    async def _ensure_terminal(self) -> None:
        if not self.owned:
            try:
                await self.conn.get(f"api/terminals/{self.name}")
                logger.debug("reusing terminal %s", self.name)
                return
            except NotFound:
                pass
            # POST with an existing name would orphan that terminal's shell: we checked it is absent.
            model = await self.conn.request("POST", "api/terminals", json_body={"name": self.name})
        else:
            model = await self.conn.request("POST", "api/terminals", json_body={})
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise MalformedAnswer(
                f"POST {self.conn.display_url}api/terminals: no terminal name in the answer"
            )
        self.name = model["name"]
        logger.info("created terminal %s", self.name)

    async def _delete_if_owned(self) -> None:
        if not self.owned or not self.name:
            return
        try:
            await self.conn.request("DELETE", f"api/terminals/{self.name}")
            logger.info("deleted terminal %s", self.name)
        except NotFound:
            pass
        except RemoteError as exc:
            logger.warning("could not delete terminal %s: %s", self.name, exc)

    async def _open(self) -> ClientConnection:
        return await open_websocket(
            self.conn, f"terminals/websocket/{self.name}", open_timeout_s=self.connect_timeout_s
        )

    async def _reopen(self) -> ClientConnection:
        def gone(exc: NotFound) -> RemoteError:
            return NotFound(f"terminal {self.name} is gone")

        return await reopen_websocket(
            lambda _timeout_s: self._open(), what=repr(self), timeout_s=self.reconnect_timeout_s,
            connect_timeout_s=self.connect_timeout_s, gone=gone,
        )  # fmt: skip

    def _require_ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("use TerminalSession as `async with TerminalSession(...) as term`")
        return self._ws

    async def _send_stdin(self, text: str) -> None:
        await self._require_ws().send(json.dumps(["stdin", text]))

    # -- public API

    async def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> ShellResult:
        """Run ``command`` in a subshell of the terminal's shell (stdin from /dev/null); wait for its status.

        The subshell sees the shell's environment, but ``cd`` or ``exit`` in the command stay inside it.

        ``timeout_s``: the command's budget; when it runs out, Ctrl-C is sent and :class:`RemoteTimeout`
        raised. ``on_output`` gets the output as it arrives, already cleaned.
        """
        nonce = secrets.token_hex(8)
        line = (
            f" printf '%s%s\\n' '__LLS_' '{nonce}__';"
            f" ( export PAGER=cat GIT_PAGER=cat; eval {shlex.quote(command)} ) </dev/null;"
            f" printf '%s%s:%s__\\n' '__LLE_' '{nonce}' \"$?\"\r"
        )
        if not self._prepared:
            line = _PREPARE + line
            self._prepared = True
        parser = _MarkerParser(nonce)
        await self._send_stdin(line)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while parser.exit_code is None:
            kind, payload = await self._receive(deadline, timeout_s, parser)
            if kind == "stdout":
                new = parser.feed(payload)
                if new and on_output is not None:
                    on_output(new)
            elif kind == "disconnect":
                raise RemoteError(f"terminal {self.name}: the shell exited before the command finished")
        return ShellResult(exit_code=parser.exit_code, output=parser.output)

    async def run_script(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> ShellResult:
        """Upload ``script`` through the contents API, run it with ``bash``, then delete it."""
        remote_name = f"lamplighter-{secrets.token_hex(6)}.sh"
        body = {"type": "file", "format": "text", "content": script}
        await self.conn.request("PUT", f"api/contents/{quote(remote_name)}", json_body=body)
        try:
            return await self.run(
                f'bash "${{JUPYTER_SERVER_ROOT:-.}}"/{remote_name}', timeout_s=timeout_s, on_output=on_output
            )
        finally:
            try:
                await self.conn.request("DELETE", f"api/contents/{quote(remote_name)}")
            except RemoteError as exc:
                logger.warning("could not delete the uploaded script %s: %s", remote_name, exc)

    async def _receive(
        self, deadline: float | None, timeout_s: float | None, parser: _MarkerParser
    ) -> tuple[str, str]:
        """The next ``(kind, text)`` message; reconnects (and re-reads the replay) on a dropped socket."""
        while True:
            ws = self._require_ws()
            wait = None if deadline is None else deadline - time.monotonic()
            try:
                if wait is not None and wait <= 0:
                    raise asyncio.TimeoutError
                frame = await asyncio.wait_for(ws.recv(), wait)
            except asyncio.TimeoutError:
                await self._interrupt()
                raise RemoteTimeout(
                    f"terminal {self.name}: the command ran past its timeout of {timeout_s:g} s; sent Ctrl-C"
                ) from None
            except ConnectionClosed:
                self._ws = await self._reopen()
                parser.reset()
                continue
            try:
                message = json.loads(frame)
                kind = str(message[0])
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                raise MalformedAnswer(f"terminal {self.name}: not a terminado message") from exc
            if kind == "stdout":
                return kind, str(message[1])
            if kind == "disconnect":
                return kind, ""

    async def _interrupt(self) -> None:
        with contextlib.suppress(ConnectionClosed, RuntimeError):
            await self._send_stdin("\x03")


async def run_shell(
    conn: Connection,
    command: str,
    *,
    timeout_s: float | None = None,
    on_output: Callable[[str], None] | None = None,
    terminal: str | None = None,
    connect_timeout_s: float = 10.0,
) -> ShellResult:
    """Run one shell command in a terminal on the server and return its exit status and output.

    ``terminal=None`` uses a fresh terminal, deleted afterwards; a name reuses (or creates and keeps)
    that terminal. A non-zero exit status is a result, not an error: only the tool's own failures raise
    (:class:`RemoteError` and subclasses, :class:`RemoteTimeout` for ``timeout_s``).
    """
    async with TerminalSession(conn, terminal, connect_timeout_s=connect_timeout_s) as term:
        return await term.run(command, timeout_s=timeout_s, on_output=on_output)


async def run_script(
    conn: Connection,
    script: str,
    *,
    timeout_s: float | None = None,
    on_output: Callable[[str], None] | None = None,
    terminal: str | None = None,
    connect_timeout_s: float = 10.0,
) -> ShellResult:
    """Like :func:`run_shell`, for a multi-line script: uploaded, run with ``bash``, deleted."""
    async with TerminalSession(conn, terminal, connect_timeout_s=connect_timeout_s) as term:
        return await term.run_script(script, timeout_s=timeout_s, on_output=on_output)
