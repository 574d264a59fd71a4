"""SageMaker Studio as a platform: stopping the app ``watch`` runs in, with ``DeleteApp``.

This is where ``lamplighter watch --platform sagemaker`` stops a Studio app: :class:`SageMakerStopper`
calls ``DeleteApp`` and verifies with ``DescribeApp``. The app is probed through its Jupyter API like any
Jupyter server (:mod:`lamplighter.platforms.jupyter`), so only the stopper lives here. Everything else
about SageMaker (the app's identity, the API client, presigned login, lifecycle configurations,
on-start, the fleet check) is in the :mod:`lamplighter.sagemaker` package.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lamplighter.errors import LamplighterError, SageMakerCallFailed
from lamplighter.model import Decision, StopOutcome, StopResult
from lamplighter.retry import Backoff, attempts
from lamplighter.sagemaker.client import (
    ACCESS_DENIED_CODES,
    RetryPolicy,
    call,
    describe_app,
    sagemaker_client,
)
from lamplighter.sagemaker.identity import AppIdentity, StudioApp

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = ["SageMakerStopper"]

logger = logging.getLogger(__name__)


class SageMakerStopper:
    """Stops a Studio app with ``DeleteApp`` and verifies it with ``DescribeApp``.

    An app that is already deleting, deleted or gone counts as stopped (or stopping). After DeleteApp
    is accepted, DescribeApp is polled for up to ``verify_timeout_s``: ``Deleted`` (or gone) is STOPPED;
    anything else by then is STOPPING, and the agent looks again on its next pass. Expected failures
    (access denied, throttled past the retries, bad credentials) come back as FAILED with one line.
    """

    def __init__(
        self,
        identity: AppIdentity,
        *,
        endpoint_url: str | None = None,
        client: SageMakerClient | Any | None = None,
        verify_timeout_s: float = 5.0,
        poll_interval_s: float = 0.5,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.identity = identity
        self._client = client or sagemaker_client(region=identity.region, endpoint_url=endpoint_url)
        self._verify_timeout_s = verify_timeout_s
        self._poll_interval_s = poll_interval_s
        self._retry = retry or RetryPolicy()

    @property
    def description(self) -> str:
        return f"DeleteApp {self.identity.label}"

    async def stop(self, decision: Decision) -> StopResult:
        try:
            return await self._stop()
        except LamplighterError as exc:
            return StopResult(StopOutcome.FAILED, _one_line(str(exc)))

    async def _stop(self) -> StopResult:
        label = self.identity.label
        try:
            await call(self._client, "DeleteApp", retry=self._retry, **self.identity.api_params())
            logger.info("DeleteApp %s accepted", label)
        except SageMakerCallFailed as exc:
            if exc.code == "ResourceNotFound":
                return StopResult(StopOutcome.STOPPED, f"app {label} does not exist (already deleted)")
            if exc.code not in ("ResourceInUse", "ValidationException"):
                if exc.code in ACCESS_DENIED_CODES:
                    return StopResult(
                        StopOutcome.FAILED,
                        f"DeleteApp {label}: access denied; give the app's execution role "
                        f"sagemaker:DeleteApp on arn:aws:sagemaker:*:*:app/{self.identity.domain_id}/*",
                    )
                raise
            # A conflict usually means it is already going away; ask instead of parsing the message.
            app = await self._describe_or_none(exc)
            if app is None or app.status == "Deleted":
                return StopResult(StopOutcome.STOPPED, f"app {label} already deleted")
            if app.status != "Deleting":
                return StopResult(StopOutcome.FAILED, _one_line(f"{exc} (app is {app.status})"))
        return await self._verify()

    async def _describe_or_none(self, original: SageMakerCallFailed) -> StudioApp | None:
        try:
            return await describe_app(self._client, self.identity)
        except LamplighterError as exc:
            raise SageMakerCallFailed(
                f"{original}; and cannot check the app: {exc}", operation="DeleteApp", code=original.code
            ) from exc

    async def _verify(self) -> StopResult:
        label = self.identity.label
        poll = Backoff(first_s=self._poll_interval_s, longest_s=self._poll_interval_s)
        status = "unknown"
        async for _ in attempts(poll, timeout_s=self._verify_timeout_s):
            try:
                app = await describe_app(self._client, self.identity)
            except LamplighterError as exc:
                return StopResult(
                    StopOutcome.STOPPING, _one_line(f"DeleteApp {label} accepted; cannot verify: {exc}")
                )
            if app is None or app.status == "Deleted":
                return StopResult(StopOutcome.STOPPED, f"app {label} deleted")
            status = app.status
        return StopResult(StopOutcome.STOPPING, f"DeleteApp {label} accepted; the app is still {status}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]
