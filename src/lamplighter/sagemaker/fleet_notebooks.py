"""Notebook instances in the fleet status: every instance of the region, and whether its agent runs.

``ListNotebookInstances`` (all pages) gives the instances with their status and the name of the
lifecycle configuration attached. An instance's agent (``watch --platform sagemaker-notebook-instance``)
logs its heartbeat as one line (:data:`lamplighter.heartbeat.LOG_MARKER` + JSON) into
``/var/log/jupyter.log``, which SageMaker ships to the CloudWatch log group
``/aws/sagemaker/NotebookInstances``, stream ``{NotebookInstanceName}/jupyter.log`` (the lifecycle
scripts' output goes to ``{NotebookInstanceName}/LifecycleConfigOnStart``); the newest such line under
``{name}/`` is read with ``FilterLogEvents`` and judged as an app's heartbeat is: by the interval the agent
recorded in it. The heartbeat file itself (``~/.lamplighter/heartbeat.json``) lies outside the instance's
Jupyter root (``/home/ec2-user/SageMaker``), so it cannot be read through the contents API.

Agent states are the apps' (:class:`lamplighter.sagemaker.fleet.AgentState`): ``n/a`` for an instance
that is not InService, or when there is no CloudWatch Logs client to read with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lamplighter.sagemaker.client import call
from lamplighter.sagemaker.fleet import AgentState, Heartbeat, agent_fields, idle_for, logged_agent

__all__ = [
    "NOTEBOOK_INSTANCE_LOG_GROUP",
    "NotebookInstanceEntry",
    "list_notebook_instances",
    "notebook_instance_status",
]

#: Where SageMaker ships a notebook instance's logs (its docs' name; a setting can change it).
NOTEBOOK_INSTANCE_LOG_GROUP = "/aws/sagemaker/NotebookInstances"


@dataclass(frozen=True)
class NotebookInstanceEntry:
    """One notebook instance with what its agent's heartbeat says."""

    name: str
    status: str  # Pending | InService | Stopping | Stopped | Failed | Deleting | Updating
    lifecycle_config: str | None  # the attached configuration's name
    agent: AgentState
    heartbeat: Heartbeat | None
    detail: str  # why the state is unknown or stale, or the agent's reason

    def idle_for(self, now: datetime) -> timedelta | None:
        return idle_for(self.heartbeat, now)

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "kind": "notebook instance",
            "name": self.name,
            "status": self.status,
            "lifecycle_config": self.lifecycle_config,
            **agent_fields(self.agent, self.heartbeat, self.detail, now),
        }


async def list_notebook_instances(client: Any, *, page_size: int = 100) -> list[dict[str, Any]]:
    """Every notebook instance of the client's region (all pages of ListNotebookInstances), by name."""
    rows: list[dict[str, Any]] = []
    query: dict[str, Any] = {"MaxResults": page_size, "SortBy": "Name"}
    while True:
        answer = await call(client, "ListNotebookInstances", **query)
        rows += [dict(row) for row in answer.get("NotebookInstances") or [] if isinstance(row, Mapping)]
        token = answer.get("NextToken")
        if not token:
            return rows
        query["NextToken"] = token


async def notebook_instance_status(
    client: Any,
    *,
    now: datetime,
    logs_client: Any | None,
    log_group: str = NOTEBOOK_INSTANCE_LOG_GROUP,
    heartbeat_interval: timedelta = timedelta(seconds=60),
    concurrency: int = 4,
    instances: list[dict[str, Any]] | None = None,
) -> list[NotebookInstanceEntry]:
    """Every notebook instance (or those of ``instances``, ListNotebookInstances rows) with its agent's state.

    A failure to read one instance's log makes that instance ``unknown``; it never stops the check.
    """
    rows = await list_notebook_instances(client) if instances is None else instances
    limit = asyncio.Semaphore(max(1, concurrency))

    async def check(row: Mapping[str, Any]) -> NotebookInstanceEntry:
        name = str(row.get("NotebookInstanceName") or "")
        status = str(row.get("NotebookInstanceStatus") or "Unknown")
        config = str(row.get("NotebookInstanceLifecycleConfigName") or "") or None
        if status != "InService":
            return NotebookInstanceEntry(
                name, status, config, AgentState.NOT_APPLICABLE, None, f"instance is {status}"
            )
        if logs_client is None:
            return NotebookInstanceEntry(
                name,
                status,
                config,
                AgentState.NOT_APPLICABLE,
                None,
                "status only (no CloudWatch Logs client)",
            )
        async with limit:
            # Only the streams "{name}" and "{name}/…" count: instance "nb1" never reads those of "nb10".
            state, beat, detail = await logged_agent(
                logs_client, name, log_group=log_group, now=now, interval=heartbeat_interval
            )
        return NotebookInstanceEntry(name, status, config, state, beat, detail)

    return list(await asyncio.gather(*(check(row) for row in rows)))
