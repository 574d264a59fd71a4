"""A SageMaker notebook instance as a platform: its Jupyter server probed, the instance stopped.

``lamplighter watch --platform sagemaker-notebook-instance`` runs inside the instance. The probe is
the Jupyter one (:mod:`lamplighter.platforms.jupyter`: kernels, sessions and terminals, so a terminal
in use keeps the instance up, which the AWS autostop sample's cron script does not see: its issue
#90), plus, while nothing runs (no kernel, no terminal), the instance's own ``LastModifiedTime``
(DescribeNotebookInstance: its last start or update) as a reading on the interaction clock, which is
what the sample falls back on with no sessions. :class:`NotebookInstanceStopper` stops the instance with
``StopNotebookInstance`` (a stop: its volume is kept) and verifies with DescribeNotebookInstance.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from lamplighter.errors import LamplighterError, SageMakerCallFailed
from lamplighter.model import (
    ActivityReading,
    Clock,
    Decision,
    ServerSnapshot,
    StopOutcome,
    StopResult,
    format_time,
)
from lamplighter.platforms.base import Probe
from lamplighter.retry import Backoff, attempts
from lamplighter.sagemaker.client import ACCESS_DENIED_CODES, RetryPolicy, call, sagemaker_client
from lamplighter.sagemaker.notebook_instance import (
    NotebookInstance,
    NotebookInstanceIdentity,
    describe_notebook_instance,
)

__all__ = ["NotebookInstanceProbe", "NotebookInstanceStopper"]

logger = logging.getLogger(__name__)

_SOURCE = "notebook instance"


class NotebookInstanceProbe:
    """The instance's Jupyter server, plus ``LastModifiedTime`` while nothing runs on it.

    ``LastModifiedTime`` is read once, the first time the server shows no kernel and no terminal: it
    changes only when the instance starts or is updated, and both restart this agent too. A failed read
    is logged and tried again at the next such probe; the Jupyter answer alone still counts meanwhile.
    A client made here (none passed in) is closed after the read: the agent has no further use for it.
    """

    def __init__(
        self,
        jupyter: Probe,
        identity: NotebookInstanceIdentity,
        *,
        endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        self._jupyter = jupyter
        self.identity = identity
        self._endpoint_url = endpoint_url
        self._client = client
        self._last_modified: datetime | None = None
        self._read = False

    @property
    def target(self) -> str:
        return f"{self.identity.label} ({self._jupyter.target})"

    async def snapshot(self) -> ServerSnapshot:
        snapshot = await self._jupyter.snapshot()
        if snapshot.kernels or snapshot.terminals:
            return snapshot
        last_modified = await self._instance_last_modified()
        if last_modified is None:
            return snapshot
        reading = ActivityReading(
            _SOURCE,
            Clock.INTERACTION,
            last_modified,
            f"{self.identity.name} last started or updated at {format_time(last_modified)} "
            "(DescribeNotebookInstance LastModifiedTime); nothing has run since",
        )
        return replace(snapshot, readings=(*snapshot.readings, reading))

    async def _instance_last_modified(self) -> datetime | None:
        if not self._read:
            owned = self._client is None
            client = self._client or sagemaker_client(
                region=self.identity.region, endpoint_url=self._endpoint_url
            )
            try:
                instance = await describe_notebook_instance(client, self.identity.name)
            except LamplighterError as exc:
                logger.warning("cannot read %s's LastModifiedTime: %s", self.identity.label, exc)
                return None
            finally:
                if owned:
                    client.close()  # its connection pool, now rather than whenever it is collected
            self._last_modified, self._read = instance.last_modified, True
        return self._last_modified

    async def cull_kernel(self, kernel_id: str) -> None:
        await self._jupyter.cull_kernel(kernel_id)

    async def cull_terminal(self, name: str) -> None:
        await self._jupyter.cull_terminal(name)


class NotebookInstanceStopper:
    """Stops the instance with ``StopNotebookInstance`` and verifies it with DescribeNotebookInstance.

    Stopped is STOPPED; Stopping after ``verify_timeout_s`` is STOPPING (the agent looks again later; a
    stopping instance takes a minute or more). SageMaker refuses to stop an instance that is not
    InService with a ValidationException: the instance is then described, and Stopping or Stopped
    count as done. Expected failures come back as FAILED with one line, never raised. A client made
    here (none passed in) is made for each stop and closed after it.
    """

    def __init__(
        self,
        identity: NotebookInstanceIdentity,
        *,
        endpoint_url: str | None = None,
        client: Any | None = None,
        verify_timeout_s: float = 5.0,
        poll_interval_s: float = 0.5,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.identity = identity
        self._endpoint_url = endpoint_url
        self._given = client
        self.client: Any = client
        self._verify_timeout_s = verify_timeout_s
        self._poll_interval_s = poll_interval_s
        self._retry = retry or RetryPolicy()

    @property
    def description(self) -> str:
        return f"StopNotebookInstance {self.identity.name}"

    async def stop(self, decision: Decision) -> StopResult:
        try:
            if self._given is None:
                self.client = sagemaker_client(region=self.identity.region, endpoint_url=self._endpoint_url)
            return await self._stop()
        except LamplighterError as exc:
            return StopResult(StopOutcome.FAILED, _one_line(str(exc)))
        finally:
            if self._given is None and self.client is not None:
                self.client.close()
                self.client = None

    async def _stop(self) -> StopResult:
        name = self.identity.name
        try:
            await call(self.client, "StopNotebookInstance", retry=self._retry, NotebookInstanceName=name)
            logger.info("StopNotebookInstance %s accepted", name)
        except SageMakerCallFailed as exc:
            if exc.code in ACCESS_DENIED_CODES:
                return StopResult(
                    StopOutcome.FAILED,
                    f"StopNotebookInstance {name}: access denied; give the instance's role "
                    f"sagemaker:StopNotebookInstance and sagemaker:DescribeNotebookInstance on "
                    f"arn:aws:sagemaker:*:*:notebook-instance/{name}",
                )
            if exc.code != "ValidationException":
                raise
            # Not InService: ask what it is rather than parse the message.
            instance = await describe_notebook_instance(self.client, name)
            if instance.status == "Stopped":
                return StopResult(StopOutcome.STOPPED, f"notebook instance {name} is already stopped")
            if instance.status != "Stopping":
                return StopResult(StopOutcome.FAILED, _one_line(f"{exc} (the instance is {instance.status})"))
        return await self._verify()

    async def _verify(self) -> StopResult:
        name = self.identity.name
        poll = Backoff(first_s=self._poll_interval_s, longest_s=self._poll_interval_s)
        status = "unknown"
        async for _ in attempts(poll, timeout_s=self._verify_timeout_s):
            try:
                instance: NotebookInstance = await describe_notebook_instance(self.client, name)
            except LamplighterError as exc:
                return StopResult(
                    StopOutcome.STOPPING,
                    _one_line(f"StopNotebookInstance {name} accepted; cannot verify: {exc}"),
                )
            if instance.status == "Stopped":
                return StopResult(StopOutcome.STOPPED, f"notebook instance {name} stopped")
            status = instance.status
        return StopResult(
            StopOutcome.STOPPING, f"StopNotebookInstance {name} accepted; the instance is still {status}"
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]
