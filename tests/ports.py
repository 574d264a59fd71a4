"""Ports for tests without a race: a server binds port 0 itself and reports the port it got.

Picking a "free" port and handing it to another process leaves it free for a while, and with many
servers starting at once another one takes it. Here every listener binds 0 and tells us its port;
a port that must refuse connections is held bound (but not listening) for the whole test.
"""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["refused_port", "start_http_server"]

_SERVING = re.compile(rb"Serving HTTP on \S+ port (\d+)")


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs (bound, never listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def start_http_server(cwd: Path, *, timeout_s: float = 10.0) -> tuple[int, subprocess.Popen[bytes]]:
    """``python -m http.server 0`` on 127.0.0.1 (a stand-in for an editor server); its port once it listens.

    http.server prints "Serving HTTP on 127.0.0.1 port N" after it has bound and is listening.
    """
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        # readline blocks until the line comes; the timeout guards a server that dies or hangs first.
        line = _readline(process, timeout_s)
        match = _SERVING.search(line)
        assert match, f"http.server did not report its port: {line!r}"
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        # http.server writes nothing else to stdout (its request log goes to stderr), so the pipe can go.
        process.stdout.close()
    return int(match.group(1)), process


def _readline(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise AssertionError(f"http.server printed nothing within {timeout_s:g} s")
    return process.stdout.readline()
