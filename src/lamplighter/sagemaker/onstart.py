"""On-start: when a SageMaker Studio app starts, run a setup script in it and record how that went.

The trigger is either a person (``lamplighter on-start``) or the CloudTrail ``CreateApp`` event through
EventBridge (:mod:`lamplighter.sagemaker.aws_lambda`). That event fires when CreateApp is *called*, so
the app is usually still Pending: :func:`run_on_start` waits, bounded, until DescribeApp says InService
(a Failed, Deleting or Deleted app fails at once) and until a presigned login reaches its Jupyter API. Then the
script runs in a Jupyter terminal through :func:`lamplighter.remote.terminal.run_script`, as the app's
user; its exit status and the end of its output make an :class:`OnStartResult`, which
:func:`record_on_start` writes to the journal.

Unlike a lifecycle configuration, the script runs while the user may already be working, and it is not
bound by the lifecycle configuration's time limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lamplighter.errors import AuthRejected, ConfigError, RemoteError, RemoteTimeout
from lamplighter.journal import Journal
from lamplighter.remote.connection import Connection
from lamplighter.remote.terminal import run_script
from lamplighter.retry import Backoff, attempts
from lamplighter.sagemaker.client import sagemaker_client, wait_until_in_service
from lamplighter.sagemaker.identity import JUPYTER_APP_TYPES, AppIdentity
from lamplighter.sagemaker.login import presigned_connection

__all__ = ["OUTPUT_TAIL_CHARS", "OnStartResult", "connect_when_ready", "record_on_start", "run_on_start"]

logger = logging.getLogger(__name__)

OUTPUT_TAIL_CHARS = 4000


def _utcnow() -> datetime:
    """The wall clock, in one place (for the result's timestamps)."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class OnStartResult:
    """How the on-start script went in one app."""

    app: AppIdentity
    exit_code: int
    output_tail: str  # the last OUTPUT_TAIL_CHARS characters, stdout and stderr merged
    started_at: datetime
    finished_at: datetime

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def summary(self) -> str:
        seconds = (self.finished_at - self.started_at).total_seconds()
        verdict = "succeeded" if self.ok else f"failed with exit status {self.exit_code}"
        return f"on-start script in {self.app.label} {verdict} after {seconds:.1f} s"

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app.label,
            "domain_id": self.app.domain_id,
            "space": self.app.space_name,
            "user_profile": self.app.user_profile_name,
            "app_type": self.app.app_type,
            "app_name": self.app.app_name,
            "exit_code": self.exit_code,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "output_tail": self.output_tail,
        }


def record_on_start(journal: Journal, result: OnStartResult) -> None:
    """One ``onstart`` event in the journal: the summary, the exit status and the end of the output."""
    journal.record(
        result.app.label,
        "onstart",
        result.summary,
        at=result.finished_at,
        verdict="ok" if result.ok else "failed",
        detail={
            "exit_code": result.exit_code,
            "started_at": result.started_at.isoformat(),
            "output_tail": result.output_tail,
        },
    )


async def connect_when_ready(
    app: AppIdentity,
    *,
    client: Any,
    deadline: float,
    poll_interval_s: float = 5.0,
    verify_tls: bool = True,
    login_as: str | None = None,
    event_user: str | None = None,
) -> Connection:
    """Wait until the app is InService and a presigned login reaches its Jupyter API (by ``deadline``).

    ``deadline`` is a ``time.monotonic()`` value. ``login_as`` names the user for a shared space;
    ``event_user`` is who the trigger says created the app (used for a shared space when it is a member).
    A private space is always logged in to as its owner.
    """
    await wait_until_in_service(
        client, app, timeout_s=max(0.0, deadline - time.monotonic()), poll_interval_s=poll_interval_s
    )
    ready = max(0.0, deadline - time.monotonic())
    async for attempt in attempts(Backoff(longest_s=poll_interval_s), timeout_s=ready):
        try:
            return await presigned_connection(
                app.domain_id,
                user_profile=app.user_profile_name,
                shared_space_user=login_as,
                event_user=event_user,
                space=app.space_name,
                app_type=app.app_type,
                verify_tls=verify_tls,
                client=client,
            )
        except AuthRejected:
            raise
        except RemoteError as exc:
            # InService can come a moment before the app's Jupyter server answers through the proxy.
            if attempt.last:
                raise RemoteTimeout(
                    f"app {app.label} is InService but its Jupyter API did not answer: {exc}"
                ) from exc
            logger.info("app %s: Jupyter not answering yet (%s); retrying", app.label, exc)
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises


async def run_on_start(
    app: AppIdentity,
    script: str,
    *,
    endpoint_url: str | None = None,
    verify_tls: bool = True,
    login_as: str | None = None,
    event_user: str | None = None,
    ready_timeout_s: float = 600.0,
    run_timeout_s: float | None = None,
    poll_interval_s: float = 5.0,
    on_output: Callable[[str], None] | None = None,
    client: Any | None = None,
) -> OnStartResult:
    """Wait for ``app`` (up to ``ready_timeout_s``), run ``script`` in a terminal there, return the result.

    A non-zero exit status is a result, not an error. Raises ``PlatformError`` when the app failed or is
    going away, ``RemoteTimeout`` when it is not ready in time or the script runs past ``run_timeout_s``,
    ``ConfigError`` for an app type without a Jupyter server.
    """
    if app.app_type not in JUPYTER_APP_TYPES:
        raise ConfigError(
            f"on-start needs a Jupyter app ({', '.join(JUPYTER_APP_TYPES)}), not {app.app_type}"
        )
    if not script.strip():
        raise ConfigError("on-start: the script is empty")
    client = client or sagemaker_client(region=app.region, endpoint_url=endpoint_url)
    started_at = _utcnow()
    deadline = time.monotonic() + ready_timeout_s
    logger.info("on-start: waiting for %s", app.label)
    conn = await connect_when_ready(
        app,
        client=client,
        deadline=deadline,
        poll_interval_s=poll_interval_s,
        verify_tls=verify_tls,
        login_as=login_as,
        event_user=event_user,
    )
    async with conn:
        logger.info("on-start: running the script in %s", app.label)
        shell = await run_script(conn, script, timeout_s=run_timeout_s, on_output=on_output)
    result = OnStartResult(
        app=app,
        exit_code=shell.exit_code,
        output_tail=shell.output[-OUTPUT_TAIL_CHARS:],
        started_at=started_at,
        finished_at=_utcnow(),
    )
    log = logger.info if result.ok else logger.warning
    log("%s", result.summary)
    return result
