"""Stand-in hub servers for bench/bench_hub.py's scale figures: a spawner that starts no process, and
one small local responder answering the Jupyter API for every one of them.

The hub itself is real (its REST API, its database, its routes in configurable-http-proxy); only the
user's server is not. :class:`StandinSpawner` hands the hub the responder's URL as the server's
address, so the hub's route for ``/user/NAME/`` points at it and the responder sees the full path
(``/user/NAME/api/kernels``). What a stand-in answers depends on its user's name:

- ``busy-*``: one kernel busy since long ago (a silent cell), no connections: never to be stopped;
- ``active-*``: idle kernels, but the server's ``last_activity`` is now (somebody is typing);
- anything else: idle since long ago, no kernels.

The responder is plain asyncio (HTTP/1.1 keep-alive, GET only, no body) and counts what it answered
by API path. Run it with ``python bench/hub_standins.py``: it prints ``{"port": N}`` once it listens
on 127.0.0.1 (port 0: the kernel picks); ``GET /_counts`` answers the counts so far (not counted).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["StandinSpawner", "answer_for", "serve"]

_LONG_AGO = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat().replace("+00:00", "Z")
_STARTED = _LONG_AGO


# The hub checks a server's version header at spawn and logs a warning for each server without one.
try:
    from jupyterhub import __version__ as _hub_version
except ImportError:  # pragma: no cover
    _hub_version = "0"
_VERSION_HEADER = f"X-JupyterHub-Version: {_hub_version}\r\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def answer_for(path: str) -> tuple[str, Any]:
    """``(counted as, JSON body)`` for one GET path (``/user/NAME/api/...``)."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    user = parts[1] if len(parts) > 1 and parts[0] == "user" else ""
    api = "/".join(parts[2:]) if user else "/".join(parts)
    busy, active = user.startswith("busy-"), user.startswith("active-")
    if api.endswith("api/status"):
        kernels = 1 if busy else 0
        return "api/status", {
            "started": _STARTED,
            "last_activity": _now() if active else _LONG_AGO,
            "connections": 0,
            "kernels": kernels,
        }
    if api.endswith("api/kernels"):
        kernel = {
            "id": "00000000-0000-0000-0000-000000000001",
            "name": "python3",
            "execution_state": "busy",
            "last_activity": _LONG_AGO,
            "connections": 0,
        }
        return "api/kernels", [kernel] if busy else []
    if api.endswith("api/terminals"):
        return "api/terminals", []
    if api.endswith("api/sessions"):
        return "api/sessions", []
    return "other", {}  # the hub's check that the server is up


async def serve(counts: Counter[str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                # An idle connection is closed after 15 s: one process stands in for 10,000 servers,
                # and the hub's and the service's connections together would pass its descriptor limit.
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=15)
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, rest = request_line.partition(" ")
                path = rest.rpartition(" ")[0]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or 0)
                if length:
                    await reader.readexactly(length)
                if path == "/_counts":
                    body: Any = dict(counts)
                else:
                    kind, body = answer_for(path) if method in ("GET", "HEAD") else ("other", {})
                    counts[kind] += 1
                data = json.dumps(body).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + _VERSION_HEADER
                    + f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
            asyncio.TimeoutError,
        ):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)


async def _main() -> None:
    counts: Counter[str] = Counter()
    server = await serve(counts)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    async with server:
        await done.wait()


try:  # the hub imports this module for the spawner; the responder alone needs no JupyterHub
    from jupyterhub.spawner import Spawner
except ImportError:  # pragma: no cover
    Spawner = object


class StandinSpawner(Spawner):  # type: ignore[misc,valid-type]
    """Starts nothing: the server "runs" at the responder's URL (``c.StandinSpawner.responder_url``)
    until the hub stops it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running = False

    @property
    def responder_url(self) -> str:
        return str(self.environment.get("STANDIN_RESPONDER_URL") or "")

    async def start(self) -> str:
        self._running = True
        return self.responder_url

    async def stop(self, now: bool = False) -> None:
        self._running = False

    async def poll(self) -> int | None:
        return None if self._running else 0

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self._running:
            state["standin"] = True
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._running = bool(state.get("standin"))

    def clear_state(self) -> None:
        super().clear_state()
        self._running = False


if __name__ == "__main__":
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        sys.exit(0)
