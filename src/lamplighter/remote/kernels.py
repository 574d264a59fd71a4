"""A kernel's lifecycle through the REST API (``api/kernels``): start, interrupt, shut down.

No websocket here: :class:`~lamplighter.remote.session.KernelSession` talks to a running kernel and
never starts or stops one.
"""

from __future__ import annotations

import logging
from typing import Any

from lamplighter.errors import ConfigError, MalformedAnswer, NotFound, RemoteError
from lamplighter.remote.connection import Connection
from lamplighter.retry import Backoff, attempts

__all__ = [
    "check_kernelspec",
    "interrupt_kernel",
    "kernelspecs",
    "shutdown_kernel",
    "start_kernel",
    "start_kernel_model",
]

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
        # Studio Classic publishes 'python3__SAGEMAKER_INTERNAL__{image ARN}': 'python3' names it
        # when one image has it.
        images = [n for n in languages if n.startswith(f"{chosen}__SAGEMAKER_INTERNAL__")]
        if len(images) == 1:
            chosen = images[0]
    if chosen not in languages:
        have = ", ".join(sorted(languages)) or "none"
        raise ConfigError(f"kernelspec {chosen!r} is not on the server; it has: {have}")
    return chosen, languages[chosen]


async def start_kernel(conn: Connection, name: str | None = None, *, path: str | None = None) -> str:
    """Start a kernel (``name``, else the server's default) whose working directory is ``path``; its id."""
    return str((await start_kernel_model(conn, name, path=path))["id"])


async def start_kernel_model(
    conn: Connection, name: str | None = None, *, path: str | None = None, instance_type: str | None = None
) -> dict[str, Any]:
    """Start a kernel and return its model. ``instance_type`` is Studio Classic's: the kernel runs on a
    KernelGateway app of that type (created if need be; the model's ``app_name`` names it)."""
    body: dict[str, str] = {}
    if name:
        body["name"] = name
    if path is not None:
        body["path"] = path
    if instance_type:
        body["instance_type"] = instance_type
    model = await conn.request("POST", "api/kernels", json_body=body)
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        raise MalformedAnswer(f"POST {conn.display_url}api/kernels: no kernel id in the answer")
    if instance_type and not model.get("app_name"):
        await shutdown_kernel(conn, str(model["id"]))  # started, but not where it was asked to run
        raise ConfigError(
            "--instance-type: the server started the kernel on no KernelGateway app (not Studio Classic?)"
        )
    logger.info("started kernel %s (%s)", model["id"], model.get("name", "default"))
    return model


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
