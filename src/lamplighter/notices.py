"""The warning before a stop: a custom command, or a notice in every open terminal and in a file.

Writing into a terminal makes its pty output, which moves the terminal's ``last_activity``; the agent
records when it wrote (``Memory.notice_at``) so the policy does not mistake its own notice for a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping

import psutil

from lamplighter.hooks import run_hook
from lamplighter.model import Decision, format_time
from lamplighter.settings import Settings

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Warns the people using an app that it is about to stop."""

    def __init__(
        self,
        settings: Settings,
        target: str,
        *,
        server_port: int | None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._target = target
        self._server_port = server_port  # None: the server is not on this machine
        self._extra = dict(extra or {})  # more variables for --warn-command (the hub's user and server)

    async def warn(self, decision: Decision) -> str:
        """Give the warning; returns what was done, for the journal."""
        if self._settings.warn_command:
            result = await run_hook(
                self._settings.warn_command, self._target, decision, timeout_s=60, extra=self._extra
            )
            return f"warning command: {result.detail}"
        message = (
            f"lamplighter: this app stops at {format_time(decision.stop_at)} unless it is used "
            f"({decision.reason}). Run 'lamplighter snooze 1h' to keep it."
        )
        done = []
        try:
            self._settings.notice_file.parent.mkdir(parents=True, exist_ok=True)
            self._settings.notice_file.write_text(message + "\n")
            done.append(str(self._settings.notice_file))
        except OSError as exc:
            logger.warning("cannot write the notice file %s: %s", self._settings.notice_file, exc.strerror)
        ttys = await asyncio.to_thread(_write_to_terminals, self._server_port, message)
        done.append(f"{ttys} terminal(s)")
        return "notice written to " + " and ".join(done)


def _write_to_terminals(port: int | None, message: str) -> int:
    """Write the message to the ttys of the local server's process tree (its Jupyter terminals)."""
    if port is None:
        return 0
    from lamplighter.processinfo import find_listening_pid

    pid = find_listening_pid(port)
    if pid is None:
        return 0
    ttys: set[str] = set()
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                tty = child.terminal()
                if tty and tty.startswith("/dev/pts/"):
                    ttys.add(tty)
    written = 0
    for tty in sorted(ttys):
        try:
            fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, f"\r\n\x1b[1m{message}\x1b[0m\r\n".encode())
            written += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return written
