"""The scheduled fleet check: is every Studio user, space and notebook instance kept from running idle?

The AWS auto-shutdown sample's extension-checker Lambda logs in as every user profile of one domain and
asks whether its extension answers. This check covers what that one misses, and logs in to nobody who
has no app running:

- every domain (``ListDomains``, or the ones named), every user profile and every space of each, whether
  or not an app runs (``ListUserProfiles``/``ListSpaces``, then ``Describe*`` for their settings):
  which lifecycle configuration their apps start with by default, whether it is lamplighter's (its
  script runs ``lamplighter watch``, read with ``DescribeStudioLifecycleConfig``), and SageMaker's own
  idle shutdown (``AppLifecycleManagement.IdleSettings``: ``LifecycleManagement``, the timeout);
- every app (:func:`lamplighter.sagemaker.fleet.fleet_status`): where one runs, the agent's heartbeat
  must be present and fresh by the agent's own interval (Jupyter apps through their contents API, Code
  Editor apps through their CloudWatch log);
- every notebook instance (``ListNotebookInstances``): whether a lifecycle configuration is attached and
  is lamplighter's (its OnStart script, read with ``DescribeNotebookInstanceLifecycleConfig``), and for an
  InService one whether its agent's heartbeat, logged to CloudWatch, is present and fresh
  (:mod:`lamplighter.sagemaker.fleet_notebooks`).

The default configuration of an app is looked up the way ``lamplighter lcc install`` sets it: the
space's own ``SpaceSettings``, then (a private space) its owner's ``UserSettings``, then the domain's
``DefaultSpaceSettings`` (a shared space) and ``DefaultUserSettings``. An owner is *protected* when its
default configuration is lamplighter's or the native idle shutdown is on; a problem is an owner with
neither, an app whose expected agent is missing or stale, a notebook instance with no configuration or
one that is not lamplighter's, an InService instance with lamplighter's configuration whose agent is
missing or stale, and anything that could not be read. :meth:`FleetReport.summary` is what the Lambda
publishes to SNS.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lamplighter.errors import LamplighterError, SageMakerCallFailed
from lamplighter.sagemaker.client import call
from lamplighter.sagemaker.fleet import AgentState, FleetEntry, fleet_status
from lamplighter.sagemaker.fleet_notebooks import (
    NOTEBOOK_INSTANCE_LOG_GROUP,
    NotebookInstanceEntry,
    list_notebook_instances,
    notebook_instance_status,
)

__all__ = [
    "FleetReport",
    "NativeIdle",
    "NotebookInstanceCheck",
    "OwnerCheck",
    "check_fleet",
    "is_lamplighter_script",
    "list_domain_ids",
]

logger = logging.getLogger(__name__)

_SETTINGS_KEY = {
    "JupyterLab": "JupyterLabAppSettings",
    "CodeEditor": "CodeEditorAppSettings",
    "JupyterServer": "JupyterServerAppSettings",
    "KernelGateway": "KernelGatewayAppSettings",
}
#: The app types a user profile's defaults are checked for (those its private spaces start).
_PROFILE_APP_TYPES = ("JupyterLab", "CodeEditor")
_MAX_MESSAGE = 250_000  # SNS takes 256 KB; the rest of the list is counted, not sent


def is_lamplighter_script(content_b64: str) -> bool:
    """A lifecycle configuration (base64, as SageMaker keeps it) that starts ``lamplighter watch``."""
    try:
        text = base64.b64decode(content_b64).decode("utf-8", errors="replace")
    except ValueError:
        return False
    return "lamplighter" in text and " watch" in text


@dataclass(frozen=True)
class NativeIdle:
    """SageMaker's own idle shutdown for one app type, as the settings resolve it."""

    enabled: bool
    timeout_minutes: int | None
    source: str  # where it was set: "space", "user profile", "domain", or "" when nowhere

    def describe(self) -> str:
        if not self.enabled:
            return "native idle shutdown off"
        after = f" after {self.timeout_minutes} min" if self.timeout_minutes else ""
        return f"native idle shutdown on{after} ({self.source})"


@dataclass(frozen=True)
class OwnerCheck:
    """One user profile or space: its default lifecycle configuration and idle settings per app type."""

    domain_id: str
    kind: str  # "user profile" | "space"
    name: str
    app_type: str  # a space's own type; a user profile is checked per type (one row each)
    lifecycle_config: str | None  # the default configuration's ARN
    lamplighter: bool | None  # its script starts lamplighter (None: it could not be read)
    native: NativeIdle
    problems: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.domain_id} {self.kind} {self.name} ({self.app_type})"

    @property
    def protected(self) -> bool:
        return bool(self.lamplighter) or self.native.enabled

    def to_json(self) -> dict[str, Any]:
        return {
            "domain_id": self.domain_id,
            "kind": self.kind,
            "name": self.name,
            "app_type": self.app_type,
            "lifecycle_config": self.lifecycle_config,
            "lamplighter": self.lamplighter,
            "native_idle": {
                "enabled": self.native.enabled,
                "timeout_minutes": self.native.timeout_minutes,
                "source": self.native.source,
            },
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class NotebookInstanceCheck:
    """One notebook instance: its agent, the lifecycle configuration attached, whether that is lamplighter's."""

    entry: NotebookInstanceEntry
    lamplighter: bool | None  # its OnStart runs lamplighter (False: none attached; None: unreadable)
    problems: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def status(self) -> str:
        return self.entry.status

    @property
    def lifecycle_config(self) -> str | None:
        return self.entry.lifecycle_config

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {**self.entry.to_json(now), "lamplighter": self.lamplighter, "problems": list(self.problems)}


@dataclass(frozen=True)
class FleetReport:
    """Everything one fleet check found."""

    checked_at: datetime
    domains: tuple[str, ...]
    owners: tuple[OwnerCheck, ...]
    apps: tuple[FleetEntry, ...]
    notebook_instances: tuple[NotebookInstanceCheck, ...]
    errors: tuple[str, ...] = ()  # what could not be read at all (a domain, the notebook instances)
    app_problems: tuple[str, ...] = field(default=())

    def problems(self) -> list[str]:
        """Every problem as one line, owners first."""
        lines = [f"{o.label}: {p}" for o in self.owners for p in o.problems]
        lines += list(self.app_problems)
        lines += [f"notebook instance {n.name}: {p}" for n in self.notebook_instances for p in n.problems]
        return lines + list(self.errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "domains": list(self.domains),
            "problems": self.problems(),
            "owners": [o.to_json() for o in self.owners],
            "apps": [a.to_json(self.checked_at) for a in self.apps],
            "notebook_instances": [n.to_json(self.checked_at) for n in self.notebook_instances],
            "errors": list(self.errors),
        }

    def subject(self) -> str:
        count = len(self.problems())
        return f"lamplighter fleet check: {count} problem{'s' if count != 1 else ''} in {len(self.domains)} domain(s)"[
            :100
        ]

    def summary(self) -> str:
        """The SNS message: counts, then one line per problem (cut to fit SNS's size limit)."""
        running = sum(1 for a in self.apps if a.agent is AgentState.RUNNING)
        watched = sum(1 for n in self.notebook_instances if n.entry.agent is AgentState.RUNNING)
        head = [
            f"lamplighter fleet check at {self.checked_at.isoformat()}",
            f"domains: {len(self.domains)}; user profiles and spaces: "
            f"{len({(o.domain_id, o.kind, o.name) for o in self.owners})}; apps: {len(self.apps)} "
            f"({running} with a running agent); notebook instances: {len(self.notebook_instances)} "
            f"({watched} with a running agent)",
        ]
        problems = self.problems()
        head.append(f"problems: {len(problems)}" if problems else "problems: none")
        text = "\n".join(head)
        for index, line in enumerate(problems):
            if len(text.encode()) + len(line.encode()) + 64 > _MAX_MESSAGE:
                return text + f"\n... and {len(problems) - index} more"
            text += "\n- " + line
        return text


async def check_fleet(
    *,
    client: Any,
    now: datetime,
    domains: Sequence[str] = (),
    logs_client: Any | None = None,
    log_group: str = "/aws/sagemaker/studio",
    heartbeat_interval: timedelta = timedelta(seconds=60),
    login_as: str | None = None,
    region: str | None = None,
    verify_tls: bool = True,
    notebook_instances: bool = True,
    notebook_log_group: str = NOTEBOOK_INSTANCE_LOG_GROUP,
    concurrency: int = 4,
) -> FleetReport:
    """Check every domain (or those named), their owners and apps, and the notebook instances."""
    domain_ids = tuple(domains) or tuple(await list_domain_ids(client))
    owners: list[OwnerCheck] = []
    apps: list[FleetEntry] = []
    errors: list[str] = []
    lccs: dict[str, bool | None] = {}
    for domain_id in domain_ids:
        try:
            found, entries = await _check_domain(
                client,
                domain_id,
                now=now,
                lccs=lccs,
                logs_client=logs_client,
                log_group=log_group,
                heartbeat_interval=heartbeat_interval,
                login_as=login_as,
                region=region,
                verify_tls=verify_tls,
                concurrency=concurrency,
            )
        except LamplighterError as exc:
            logger.warning("fleet check: domain %s: %s", domain_id, exc)
            errors.append(f"domain {domain_id}: cannot check: {exc}")
            continue
        owners += found
        apps += entries
    instances: list[NotebookInstanceCheck] = []
    if notebook_instances:
        try:
            rows = await list_notebook_instances(client)
        except LamplighterError as exc:
            errors.append(f"notebook instances: cannot list: {exc}")
            rows = []
        checked = await notebook_instance_status(
            client,
            now=now,
            logs_client=logs_client,
            log_group=notebook_log_group,
            heartbeat_interval=heartbeat_interval,
            concurrency=concurrency,
            instances=rows,
        )
        configs: dict[str, bool | str] = {}
        instances = [await _notebook_instance(client, configs, entry) for entry in checked]
    return FleetReport(
        checked_at=now,
        domains=domain_ids,
        owners=tuple(owners),
        apps=tuple(apps),
        notebook_instances=tuple(instances),
        errors=tuple(errors),
        app_problems=tuple(_app_problems(apps, owners)),
    )


async def _check_domain(
    client: Any,
    domain_id: str,
    *,
    now: datetime,
    lccs: dict[str, bool | None],
    concurrency: int,
    **status: Any,
) -> tuple[list[OwnerCheck], list[FleetEntry]]:
    domain = await call(client, "DescribeDomain", DomainId=domain_id)
    profiles = await _all(client, "ListUserProfiles", "UserProfiles", DomainIdEquals=domain_id)
    spaces = await _all(client, "ListSpaces", "Spaces", DomainIdEquals=domain_id)
    limit = asyncio.Semaphore(max(1, concurrency))

    async def describe(operation: str, **params: Any) -> dict[str, Any]:
        async with limit:
            return await call(client, operation, DomainId=domain_id, **params)

    profile_details = await asyncio.gather(
        *(describe("DescribeUserProfile", UserProfileName=p["UserProfileName"]) for p in profiles)
    )
    space_details = await asyncio.gather(
        *(describe("DescribeSpace", SpaceName=s["SpaceName"]) for s in spaces)
    )
    by_profile = {p["UserProfileName"]: p for p in profile_details}
    owners: list[OwnerCheck] = []
    for profile in profile_details:
        for app_type in _PROFILE_APP_TYPES:
            owners.append(
                await _owner(
                    client,
                    lccs,
                    domain_id,
                    "user profile",
                    profile["UserProfileName"],
                    app_type,
                    levels=(
                        ("user profile", profile.get("UserSettings")),
                        ("domain", domain.get("DefaultUserSettings")),
                    ),
                )
            )
    for space in space_details:
        app_type = str((space.get("SpaceSettings") or {}).get("AppType") or "JupyterLab")
        owner = (space.get("OwnershipSettings") or {}).get("OwnerUserProfileName")
        levels: list[tuple[str, Any]] = [("space", space.get("SpaceSettings"))]
        if owner:
            levels.append(("user profile", (by_profile.get(owner) or {}).get("UserSettings")))
        else:
            levels.append(("domain", domain.get("DefaultSpaceSettings")))
        levels.append(("domain", domain.get("DefaultUserSettings")))
        owners.append(
            await _owner(client, lccs, domain_id, "space", space["SpaceName"], app_type, levels=tuple(levels))
        )
    entries = await fleet_status(domain_id, now=now, client=client, concurrency=concurrency, **status)
    return owners, entries


async def _owner(
    client: Any,
    lccs: dict[str, bool | None],
    domain_id: str,
    kind: str,
    name: str,
    app_type: str,
    *,
    levels: tuple[tuple[str, Any], ...],
) -> OwnerCheck:
    key = _SETTINGS_KEY.get(app_type, "")
    arn: str | None = None
    enabled: bool | None = None
    timeout: int | None = None
    source = ""
    for level, settings in levels:
        app_settings = settings.get(key) if isinstance(settings, Mapping) else None
        if not isinstance(app_settings, Mapping):
            continue
        arn = arn or (app_settings.get("DefaultResourceSpec") or {}).get("LifecycleConfigArn")
        idle = (app_settings.get("AppLifecycleManagement") or {}).get("IdleSettings") or {}
        # A space's own IdleSettings hold only the timeout; whether it is on comes from above it.
        if timeout is None and idle.get("IdleTimeoutInMinutes"):
            timeout = int(idle["IdleTimeoutInMinutes"])
            source = source or level
        if enabled is None and idle.get("LifecycleManagement"):
            enabled = idle["LifecycleManagement"] == "ENABLED"
            source = level if enabled and not source else source
    native = NativeIdle(bool(enabled), timeout if enabled else None, source if enabled else "")
    ours = await _is_ours(client, lccs, arn) if arn else False
    problems: list[str] = []
    if arn is None and not native.enabled:
        problems.append(
            "no default lifecycle configuration and native idle shutdown off: nothing stops idle apps"
        )
    elif ours is None and not native.enabled:
        problems.append(f"cannot read lifecycle configuration {arn}")
    elif not ours and not native.enabled:
        problems.append(
            f"default lifecycle configuration {str(arn).rsplit('/', 1)[-1]} does not run lamplighter, "
            "native idle shutdown off"
        )
    return OwnerCheck(domain_id, kind, name, app_type, arn, ours, native, tuple(problems))


async def _is_ours(client: Any, lccs: dict[str, bool | None], arn: str) -> bool | None:
    if arn not in lccs:
        try:
            found = await call(
                client, "DescribeStudioLifecycleConfig", StudioLifecycleConfigName=arn.rsplit("/", 1)[-1]
            )
            lccs[arn] = is_lamplighter_script(str(found.get("StudioLifecycleConfigContent") or ""))
        except SageMakerCallFailed as exc:
            logger.debug("fleet check: cannot read %s: %s", arn, exc)
            lccs[arn] = None
    return lccs[arn]


def _app_problems(apps: Sequence[FleetEntry], owners: Sequence[OwnerCheck]) -> list[str]:
    """An app whose owner relies on lamplighter needs a fresh agent; unreadable apps are listed too."""
    native_only = {
        (o.domain_id, o.name, o.app_type) for o in owners if o.native.enabled and not o.lamplighter
    }
    lines = []
    for entry in apps:
        identity = entry.app.identity
        where = f"{identity.domain_id} {identity.owner} {identity.app_type}/{identity.app_name}"
        if entry.agent in (AgentState.NO_AGENT, AgentState.STALE):
            if (identity.domain_id, identity.owner, identity.app_type) in native_only:
                continue  # left to SageMaker's own idle shutdown, by its settings
            lines.append(f"app {where}: agent {entry.agent.value}: {entry.detail}")
        elif entry.agent is AgentState.UNKNOWN:
            lines.append(f"app {where}: cannot read its agent: {entry.detail}")
    return lines


async def _notebook_instance(
    client: Any, configs: dict[str, bool | str], entry: NotebookInstanceEntry
) -> NotebookInstanceCheck:
    """The instance's problems: its configuration, then (where lamplighter's agent is expected) its agent."""
    config = entry.lifecycle_config
    problems: list[str] = []
    ours: bool | None = False
    if config is None:
        problems.append("no lifecycle configuration attached: nothing stops it when idle")
    else:
        found = await _is_ours_on_instance(client, configs, config)
        ours = found if isinstance(found, bool) else None
        if isinstance(found, str):
            problems.append(f"cannot read lifecycle configuration {config}: {found}")
        elif not found:
            problems.append(f"lifecycle configuration {config} does not run lamplighter")
    # An agent is expected only where lamplighter's script starts one (or that could not be told).
    if entry.agent in (AgentState.NO_AGENT, AgentState.STALE) and ours is not False:
        problems.append(f"agent {entry.agent.value}: {entry.detail}")
    elif entry.agent is AgentState.UNKNOWN:
        problems.append(f"cannot read its agent: {entry.detail}")
    return NotebookInstanceCheck(entry, ours, tuple(problems))


async def _is_ours_on_instance(client: Any, configs: dict[str, bool | str], name: str) -> bool | str:
    """Whether the notebook-instance configuration ``name`` starts lamplighter, or why it cannot be read."""
    if name not in configs:
        try:
            found = await call(
                client, "DescribeNotebookInstanceLifecycleConfig", NotebookInstanceLifecycleConfigName=name
            )
            configs[name] = any(
                isinstance(hook, Mapping) and is_lamplighter_script(str(hook.get("Content") or ""))
                for hook in found.get("OnStart") or []
            )
        except SageMakerCallFailed as exc:
            configs[name] = " ".join(str(exc).split())[:300]
    return configs[name]


async def list_domain_ids(client: Any) -> list[str]:
    """Every Studio domain of the client's region (all pages of ListDomains)."""
    return [str(d["DomainId"]) for d in await _all(client, "ListDomains", "Domains")]


async def _all(client: Any, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of a List* call."""
    rows: list[dict[str, Any]] = []
    query: dict[str, Any] = {"MaxResults": 100, **params}
    while True:
        answer = await call(client, operation, **query)
        rows += list(answer.get(key) or [])
        token = answer.get("NextToken")
        if not token:
            return rows
        query["NextToken"] = token
