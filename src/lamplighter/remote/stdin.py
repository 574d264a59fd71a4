"""Answers to a cell's ``input()`` and ``getpass()``: the kernel's stdin channel, seen from the client.

A kernel asks with an ``input_request`` (a prompt, and whether it is a password) and blocks until an
``input_reply`` comes. Without an answerer the runner sends ``allow_stdin: false``, so ipykernel raises
``StdinNotImplementedError`` in the cell at once, as under nbclient: a run never waits for a person who
is not there.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections import deque
from collections.abc import Iterable
from typing import Protocol

__all__ = ["FileAnswers", "InputAnswerer", "TerminalAnswers"]


class InputAnswerer(Protocol):
    """Answers one ``input_request``; None when it has nothing to say (a file of answers ran out)."""

    async def answer(self, prompt: str, *, password: bool) -> str | None: ...


class TerminalAnswers:
    """Asks the person at this terminal: the prompt on stderr, the answer from stdin (hidden for a password)."""

    async def answer(self, prompt: str, *, password: bool) -> str | None:
        return await asyncio.to_thread(self._ask, prompt, password)

    @staticmethod
    def _ask(prompt: str, password: bool) -> str | None:
        if password:
            return getpass.getpass(prompt, stream=sys.stderr)
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return None  # stdin is at its end
        return line.rstrip("\n")


class FileAnswers:
    """Answers taken in order, one a line, from a file (for jobs with no person at the terminal)."""

    def __init__(self, answers: Iterable[str]) -> None:
        self._answers = deque(answers)

    @classmethod
    def from_text(cls, text: str) -> FileAnswers:
        return cls(text.splitlines())

    async def answer(self, prompt: str, *, password: bool) -> str | None:
        return self._answers.popleft() if self._answers else None
