"""What this machine says about one local process: who listens on a port, and a short, safe label for it.

Used by the process and GPU signals (naming the busy process), the Code Editor probe and stopper
(finding code-server by its port) and the notices (the server's terminals).
"""

from __future__ import annotations

import os
import re

import psutil

__all__ = ["describe_process", "find_listening_pid"]

_LABEL_MAX = 60
_SECRET_ARG = re.compile(r"(?i)(token|password|passwd|secret|key|credential)")


def find_listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (any address), or None if none or not visible."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        # macOS needs root for the system-wide table; ask each visible process instead.
        return _find_listening_pid_slow(port)
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def _find_listening_pid_slow(port: int) -> int | None:
    for proc in psutil.process_iter():
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return proc.pid
        except psutil.Error:
            continue
    return None


def describe_process(argv: list[str], name: str) -> str:
    """``python train.py``: a short command line for reasons, with secret-looking arguments masked."""
    if not argv:
        return name
    words = [os.path.basename(argv[0]) or argv[0]]
    hide_next = False
    for arg in argv[1:]:
        if hide_next:
            words.append("***")
            hide_next = False
        elif _SECRET_ARG.search(arg):
            head, sep, _ = arg.partition("=")
            if sep:
                words.append(f"{head}=***")
            else:
                words.append(arg)
                hide_next = arg.startswith("-")
        else:
            words.append(arg)
    # `python -c` programs carry newlines; a reason line must stay one line.
    text = " ".join(" ".join(words).split())
    return text if len(text) <= _LABEL_MAX else text[: _LABEL_MAX - 3] + "..."
