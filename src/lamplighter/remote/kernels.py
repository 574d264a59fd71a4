"""A kernel's lifecycle through the REST API (``api/kernels``): start, interrupt, shut down.

No websocket here: :class:`~lamplighter.remote.session.KernelSession` talks to a running kernel and
never starts or stops one.
"""

from __future__ import annotations

import logging

from lamplighter.errors import ConfigError, MalformedAnswer, NotFound, RemoteError
from lamplighter.remote.connection import Connection
from lamplighter.retry import Backoff, attempts

__all__ = ["check_kernelspec", "interrupt_kernel", "kernelspecs", "shutdown_kernel", "start_kernel"]

logger = logging.getLogger(__name__)

_SHUTDOWN_BACKOFF = Backoff(first_s=0.1, longest_s=1.0)


async def kernelspecs(conn: Connection) -> tuple[str, dict[str, str]]:
    """The server's default kernelspec and every kernelspec's language (``{"python3": "python"}``)."""
    model = await conn.get("api/kernelspecs")
    specs = model.get("kernelspecs") if isinstance(model, dict) else None
    if not isinstance(specs, dict):
        raise MalformedAnswer(f"GET {conn.display_url}api/kernelspecs: no kernelspecs in the answer")
    languages = {
        str(name): str(((entry or {}).get("spec") or {}).get("language") or "")
        for name, entry in specs.items()
    }
    return str(model.get("default") or ""), languages


async def check_kernelspec(conn: Connection, name: str | None) -> tuple[str, str]:
    """The kernelspec a run will start (``name``, else the server's default) and its language.

    A name the server lacks is a :class:`ConfigError` listing those it has: the server itself would
    answer a bare HTTP 500, which reads like a broken server.
    """
    default, languages = await kernelspecs(conn)
    chosen = name or default
    if chosen not in languages and chosen.lower() in languages:
        chosen = chosen.lower()  # jupyter_client stores kernelspec names lowercased
    if chosen not in languages:
        have = ", ".join(sorted(languages)) or "none"
        raise ConfigError(f"kernelspec {chosen!r} is not on the server; it has: {have}")
    return chosen, languages[chosen]


async def start_kernel(conn: Connection, name: str | None = None, *, path: str | None = None) -> str:
    """Start a kernel (``name``, else the server's default) whose working directory is ``path``; its id."""
    body: dict[str, str] = {}
    if name:
        body["name"] = name
    if path is not None:
        body["path"] = path
    model = await conn.request("POST", "api/kernels", json_body=body)
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        raise MalformedAnswer(f"POST {conn.display_url}api/kernels: no kernel id in the answer")
    logger.info("started kernel %s (%s)", model["id"], model.get("name", "default"))
    return str(model["id"])


async def shutdown_kernel(conn: Connection, kernel_id: str, *, retry_s: float = 10.0) -> bool:
    """Shut a kernel down; ``False`` if it was already gone.

    A kernel caught in the middle of an automatic restart makes the server answer 500 (jupyter_server
    2.x trips over its own restart future), so server errors are retried for up to ``retry_s``.
    """
    async for attempt in attempts(_SHUTDOWN_BACKOFF, timeout_s=retry_s):
        try:
            await conn.request("DELETE", f"api/kernels/{kernel_id}")
        except NotFound:
            return False
        except RemoteError as exc:
            if exc.status is None or exc.status < 500 or attempt.last:
                raise
            logger.info("shutting down kernel %s failed (%s); retrying", kernel_id, exc)
            continue
        logger.info("shut down kernel %s", kernel_id)
        return True
    raise AssertionError("attempts() ends with a last attempt, which returns or raises")


async def interrupt_kernel(conn: Connection, kernel_id: str) -> None:
    """Interrupt a kernel through REST (works for both signal and message interrupt modes)."""
    await conn.request("POST", f"api/kernels/{kernel_id}/interrupt")
