"""Talking to a live Jupyter server: the connection, and the kernel, notebook and terminal runners.

``Connection`` does every REST call; ``KernelSession`` owns the kernel websocket protocol;
``NotebookRunner`` runs whole notebooks on it; ``TerminalSession`` / ``run_shell`` run shell commands in
a terminal. Nothing else in lamplighter speaks either websocket protocol.
"""

from __future__ import annotations

from lamplighter.remote.connection import Connection
from lamplighter.remote.kernel import (
    Execution,
    ExecutionResult,
    KernelSession,
    interrupt_kernel,
    shutdown_kernel,
    start_kernel,
)
from lamplighter.remote.notebook import (
    LocalNotebookStore,
    NotebookResult,
    NotebookRunner,
    NotebookStore,
    RunObserver,
    ServerNotebookStore,
    inject_parameters,
)
from lamplighter.remote.terminal import ShellResult, TerminalSession, run_script, run_shell, strip_ansi

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
