"""Talking to a live Jupyter server: the connection, and the kernel, notebook and terminal runners.

``Connection`` does every REST call; ``transport`` opens (and reopens) every websocket; ``KernelSession``
(``session``, on ``frames`` and ``outputs``) speaks the kernel protocol, and ``kernels`` starts, interrupts
and shuts kernels down; ``NotebookRunner`` runs whole notebooks on a session; ``TerminalSession`` /
``run_shell`` run shell commands in a terminal. Nothing else in lamplighter speaks either websocket protocol.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lamplighter.remote.connection import Connection

if TYPE_CHECKING:
    from lamplighter.remote.kernels import interrupt_kernel, shutdown_kernel, start_kernel
    from lamplighter.remote.notebook import (
        LocalNotebookStore,
        NotebookResult,
        NotebookRunner,
        NotebookStore,
        RunObserver,
        ServerNotebookStore,
        inject_parameters,
    )
    from lamplighter.remote.session import Execution, ExecutionResult, KernelSession
    from lamplighter.remote.terminal import ShellResult, TerminalSession, run_script, run_shell, strip_ansi

# The runners load websockets; they are imported on first use so that the watch agent, which only
# needs the connection, stays small.
_LAZY = {
    **dict.fromkeys(("interrupt_kernel", "shutdown_kernel", "start_kernel"), "lamplighter.remote.kernels"),
    **dict.fromkeys(("Execution", "ExecutionResult", "KernelSession"), "lamplighter.remote.session"),
    **dict.fromkeys(
        (
            "LocalNotebookStore",
            "NotebookResult",
            "NotebookRunner",
            "NotebookStore",
            "RunObserver",
            "ServerNotebookStore",
            "inject_parameters",
        ),
        "lamplighter.remote.notebook",
    ),
    **dict.fromkeys(
        ("ShellResult", "TerminalSession", "run_script", "run_shell", "strip_ansi"),
        "lamplighter.remote.terminal",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Connection",
    "Execution",
    "ExecutionResult",
    "KernelSession",
    "LocalNotebookStore",
    "NotebookResult",
    "NotebookRunner",
    "NotebookStore",
    "RunObserver",
    "ServerNotebookStore",
    "ShellResult",
    "TerminalSession",
    "inject_parameters",
    "interrupt_kernel",
    "run_script",
    "run_shell",
    "shutdown_kernel",
    "start_kernel",
    "strip_ansi",
]
