"""SageMaker notebook instances: which instance this is, what the API says of it, its lifecycle configuration.

A notebook instance is one EC2-backed machine running a Jupyter server on ``https://localhost:8443``
(a self-signed certificate). Inside it ``/opt/ml/metadata/resource-metadata.json`` names it
(``ResourceName``, ``ResourceArn``), as the AWS autostop sample reads it
(:meth:`NotebookInstanceIdentity.from_metadata`). It is stopped, not deleted: ``StopNotebookInstance``
keeps its ML storage volume, and ``StartNotebookInstance`` brings it back.

:func:`install_notebook_instance_lcc` attaches lamplighter's on-start script: a notebook-instance
lifecycle configuration (``CreateNotebookInstanceLifecycleConfig``, or
``UpdateNotebookInstanceLifecycleConfig`` when one of that name exists: unlike Studio's, these can be
changed) set on the instance with ``UpdateNotebookInstance``, which SageMaker accepts only while the
instance is Stopped.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lamplighter.errors import ConfigError, SageMakerCallFailed
from lamplighter.model import parse_timestamp
from lamplighter.sagemaker.client import call, sagemaker_client
from lamplighter.sagemaker.identity import DEFAULT_METADATA_PATH, read_metadata_file
from lamplighter.sagemaker.lcc import MAX_CONTENT_CHARS, ApiCall

__all__ = [
    "NOTEBOOK_INSTANCE_PORT",
    "NotebookInstance",
    "NotebookInstanceIdentity",
    "NotebookInstanceInstall",
    "describe_notebook_instance",
    "install_notebook_instance_lcc",
    "notebook_instance_lcc_name",
]

#: Where a notebook instance's own Jupyter server listens (https, self-signed).
NOTEBOOK_INSTANCE_PORT = 8443
# botocore's sagemaker model: NotebookInstanceName and NotebookInstanceLifecycleConfigName patterns.
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_MAX_NAME = 63


def check_name(name: str, what: str = "notebook instance") -> str:
    """``name`` if SageMaker would accept it as a notebook instance (or its configuration's) name."""
    if not name or len(name) > _MAX_NAME or not _NAME.match(name):
        raise ConfigError(
            f"{what} name {name!r}: 1 to 63 letters, digits and dashes, not starting with a dash"
        )
    return name


@dataclass(frozen=True)
class NotebookInstanceIdentity:
    """One notebook instance: its name, and the region it lives in (``None``: boto3's default)."""

    name: str
    region: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def label(self) -> str:
        """``notebook-instance/my-nb``: safe to log."""
        return f"notebook-instance/{self.name}"

    @classmethod
    def from_metadata(cls, path: Path | None = None) -> NotebookInstanceIdentity:
        """Read the instance's name (``ResourceName``) and region (from ``ResourceArn``); raises ``ConfigError``."""
        path = path or DEFAULT_METADATA_PATH
        data = read_metadata_file(
            path,
            missing="is this a SageMaker notebook instance? (--sagemaker-metadata, or name it with "
            "--notebook-instance)",
        )
        return cls.from_metadata_dict(data, source=str(path))

    @classmethod
    def from_metadata_dict(
        cls, data: Mapping[str, Any], *, source: str = "resource metadata"
    ) -> NotebookInstanceIdentity:
        name = data.get("ResourceName")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: missing ResourceName")
        arn = data.get("ResourceArn")
        parts = arn.split(":") if isinstance(arn, str) else []
        if len(parts) > 5 and not parts[5].startswith("notebook-instance/"):
            # A Studio app's metadata has the same file name: say so rather than stop the wrong thing.
            raise ConfigError(
                f"{source}: ResourceArn is not a notebook instance's ({parts[5].split('/')[0]})"
            )
        region = parts[3] if len(parts) > 5 and parts[3] else None
        try:
            return cls(name.strip(), region)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class NotebookInstance:
    """A notebook instance as DescribeNotebookInstance reports it."""

    name: str
    status: str  # Pending | InService | Stopping | Stopped | Failed | Deleting | Updating
    last_modified: datetime | None
    lifecycle_config: str | None = None
    failure_reason: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> NotebookInstance:
        def moment(key: str) -> datetime | None:
            value = data.get(key)
            try:
                return parse_timestamp(value) if value else None
            except ValueError:
                return None

        reason = data.get("FailureReason")
        return cls(
            name=str(data.get("NotebookInstanceName") or ""),
            status=str(data.get("NotebookInstanceStatus") or "Unknown"),
            last_modified=moment("LastModifiedTime"),
            lifecycle_config=str(data.get("NotebookInstanceLifecycleConfigName") or "") or None,
            failure_reason=str(reason) if reason else None,
        )


async def describe_notebook_instance(client: Any, name: str) -> NotebookInstance:
    """DescribeNotebookInstance; raises ``SageMakerCallFailed`` (a missing instance is a ValidationException)."""
    return NotebookInstance.from_api(
        await call(client, "DescribeNotebookInstance", NotebookInstanceName=name)
    )


# -- lifecycle configuration ---------------------------------------------------------------------


def notebook_instance_lcc_name(instance: str) -> str:
    """``lamplighter-<instance>``, cut to SageMaker's 63 characters."""
    return check_name(f"lamplighter-{instance}"[:_MAX_NAME].rstrip("-"), "lifecycle configuration")


@dataclass(frozen=True)
class NotebookInstanceInstall:
    """What :func:`install_notebook_instance_lcc` did (or, in a dry run, would do)."""

    lcc_name: str
    lcc_arn: str
    instance: str
    calls: tuple[ApiCall, ...]
    dry_run: bool
    notes: tuple[str, ...] = ()


async def install_notebook_instance_lcc(
    script: str,
    *,
    instance: str,
    name: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    client: Any | None = None,
) -> NotebookInstanceInstall:
    """Create (or update) the lifecycle configuration with ``script`` as OnStart and set it on ``instance``.

    SageMaker changes an instance's configuration only while it is Stopped: an instance in any other
    state is refused here with one line, before anything is written. An instance that already has this
    configuration only gets the configuration's content updated (the next start runs it).
    """
    check_name(instance)
    name = check_name(name or notebook_instance_lcc_name(instance), "lifecycle configuration")
    content = base64.b64encode(script.encode()).decode()
    if len(content) > MAX_CONTENT_CHARS:
        raise ConfigError(
            f"the script is {len(content)} base64 characters; SageMaker takes {MAX_CONTENT_CHARS}"
        )
    client = client or sagemaker_client(region=region, endpoint_url=endpoint_url)
    try:
        current = await describe_notebook_instance(client, instance)
    except SageMakerCallFailed as exc:
        raise ConfigError(f"notebook instance {instance}: cannot read it ({exc})") from None
    notes: list[str] = []
    calls: list[ApiCall] = []
    existing = await _describe_lcc(client, name)
    on_start = [{"Content": content}]
    if existing is None:
        calls.append(
            ApiCall(
                "CreateNotebookInstanceLifecycleConfig",
                {"NotebookInstanceLifecycleConfigName": name, "OnStart": on_start},
            )
        )
        arn = f"<arn of {name}>"
    else:
        arn = str(existing.get("NotebookInstanceLifecycleConfigArn") or name)
        if [item.get("Content") for item in existing.get("OnStart") or []] != [content]:
            # OnCreate is left as it is: only the on-start script is lamplighter's.
            calls.append(
                ApiCall(
                    "UpdateNotebookInstanceLifecycleConfig",
                    {"NotebookInstanceLifecycleConfigName": name, "OnStart": on_start},
                )
            )
    if current.lifecycle_config != name:
        if current.status not in ("Stopped", "Failed"):
            raise ConfigError(
                f"notebook instance {instance} is {current.status}: SageMaker changes its lifecycle "
                "configuration only while it is Stopped; stop it first "
                f"(aws sagemaker stop-notebook-instance --notebook-instance-name {instance})"
            )
        if current.lifecycle_config:
            notes.append(f"replaces the lifecycle configuration {current.lifecycle_config} of {instance}")
        calls.append(
            ApiCall("UpdateNotebookInstance", {"NotebookInstanceName": instance, "LifecycleConfigName": name})
        )
    elif current.status == "InService":
        notes.append(f"{instance} is InService: the script runs at its next start")
    if not dry_run:
        for planned in calls:
            answer = await call(client, planned.operation, **planned.params)
            arn = str(answer.get("NotebookInstanceLifecycleConfigArn") or arn)
    return NotebookInstanceInstall(name, arn, instance, tuple(calls), dry_run, tuple(notes))


async def _describe_lcc(client: Any, name: str) -> dict[str, Any] | None:
    """The configuration, or ``None``: SageMaker answers a missing one with a ValidationException.

    Listing by name avoids telling "missing" from other validation errors by their message text.
    """
    names: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"NameContains": name, "MaxResults": 100}
        if token:
            params["NextToken"] = token
        answer = await call(client, "ListNotebookInstanceLifecycleConfigs", **params)
        items = answer.get("NotebookInstanceLifecycleConfigs") or []
        names += [str(item.get("NotebookInstanceLifecycleConfigName")) for item in items]
        token = answer.get("NextToken")
        if not token:
            break
    if name not in names:
        return None
    return await call(
        client, "DescribeNotebookInstanceLifecycleConfig", NotebookInstanceLifecycleConfigName=name
    )
