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

__all__ = ["FileAnswers", "InputAnswerer", "NoMoreAnswers", "TerminalAnswers"]


class NoMoreAnswers(Exception):
    """The answerer has nothing to say to this prompt (a file of answers ran out)."""


class InputAnswerer(Protocol):
    """Answers one ``input_request``; raises :class:`NoMoreAnswers` when it cannot."""

    async def answer(self, prompt: str, *, password: bool) -> str: ...


class TerminalAnswers:
    """Asks the person at this terminal: the prompt on stderr, the answer from stdin (hidden for a password)."""

    async def answer(self, prompt: str, *, password: bool) -> str:
        return await asyncio.to_thread(self._ask, prompt, password)

    @staticmethod
    def _ask(prompt: str, password: bool) -> str:
        if password:
            return getpass.getpass(prompt, stream=sys.stderr)
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise NoMoreAnswers("stdin is at its end")
        return line.rstrip("\n")


class FileAnswers:
    """Answers taken in order, one a line, from a file (for jobs with no person at the terminal)."""

    def __init__(self, answers: Iterable[str]) -> None:
        self._answers = deque(answers)

    @classmethod
    def from_text(cls, text: str) -> FileAnswers:
        return cls(text.splitlines())

    async def answer(self, prompt: str, *, password: bool) -> str:
        if not self._answers:
            raise NoMoreAnswers(f"no answer left for the prompt {prompt!r}")
        return self._answers.popleft()
