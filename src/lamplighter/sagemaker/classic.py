"""Studio Classic's billed part: KernelGateway apps, what runs on them, and when each one is idle. No I/O.

In Studio Classic the JupyterServer app runs on a free instance; every kernel and every *image terminal*
runs on a KernelGateway app, one per image and instance type, and only those are billed. The
JupyterServer's kernel models carry the ``app_name`` (and ``instance_type``) of the app the kernel runs
on; an image terminal is named ``{image ARN}__{terminal id}__{instance type}`` (system terminals, named
``1``, ``2``…, run on the free instance). The AWS auto-shutdown extension maps them the same way
(``idle_checker.py::build_app_info``).

:func:`decide_app` judges one KernelGateway app with the one policy (:func:`lamplighter.policy.decide`):
its kernels and image terminals are the snapshot, the app's creation time is the server's start, so an
app nobody ever started a kernel on is measured from its creation, with the startup grace (the AWS
extension left such apps running: its issue #7). A busy kernel keeps its app; with ``keep_terminals``
an open image terminal keeps its app too. The idle timeout may depend on the instance type
(:class:`InstanceTimeouts`: shorter for GPU instances, the extension's issue #48).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from lamplighter.errors import ConfigError, MalformedAnswer
from lamplighter.model import (
    ActivityReading,
    Clock,
    Decision,
    KernelInfo,
    Memory,
    ServerSnapshot,
    TerminalInfo,
    format_duration,
    parse_timestamp,
)
from lamplighter.policy import PolicySettings, decide

__all__ = [
    "ClassicKernel",
    "InstanceTimeouts",
    "KernelGatewayApp",
    "decide_app",
    "image_terminal_key",
    "parse_apps_endpoint",
    "parse_classic_kernels",
    "parse_terminals",
    "place",
]

#: Studio Classic separates an image terminal's name parts, and a kernelspec's, with this.
SEPARATOR = "__"
#: Kernelspec names as Classic images publish them: ``python3__SAGEMAKER_INTERNAL__{image ARN}``.
KERNELSPEC_MARK = "__SAGEMAKER_INTERNAL__"


@dataclass(frozen=True)
class KernelGatewayApp:
    """One KernelGateway app of the user profile; ``created_at`` is None where the source does not say."""

    app_name: str
    environment_arn: str
    instance_type: str
    created_at: datetime | None = None
    image_name: str = ""
    status: str = "InService"  # Pending while its instance comes up

    @property
    def label(self) -> str:
        image = self.image_name or self.environment_arn.rpartition("/")[2] or "?"
        return f"KernelGateway app {self.app_name} ({image} on {self.instance_type})"


@dataclass(frozen=True)
class ClassicKernel:
    """A kernel and the KernelGateway app it runs on (``None``: not a Classic kernel)."""

    info: KernelInfo
    app_name: str | None
    instance_type: str | None


def parse_apps_endpoint(answer: Any) -> tuple[KernelGatewayApp, ...]:
    """``GET {base}sagemaker/api/apps``: a list of ``{app_name, environment_arn, instance_type, …}``."""
    if not isinstance(answer, list):
        raise MalformedAnswer("sagemaker/api/apps: expected a list of apps")
    apps = []
    for item in answer:
        if not isinstance(item, dict) or not isinstance(item.get("app_name"), str):
            raise MalformedAnswer("sagemaker/api/apps: an app without an app_name")
        apps.append(
            KernelGatewayApp(
                app_name=item["app_name"],
                environment_arn=str(item.get("environment_arn") or ""),
                instance_type=str(item.get("instance_type") or ""),
                image_name=str(item.get("image_name") or item.get("environment_name") or ""),
                status=str(item.get("status") or "InService"),
            )
        )
    return tuple(apps)


def parse_classic_kernels(kernels: Any, sessions: Any = ()) -> tuple[ClassicKernel, ...]:
    """Kernel models with Studio Classic's ``app_name`` and ``instance_type``; off-shape raises ``MalformedAnswer``.

    A malformed kernel fails the whole reading: skipping it could make its app look empty.
    """
    if not isinstance(kernels, list):
        raise MalformedAnswer("api/kernels: expected a list")
    paths: dict[str, str] = {}
    for session in sessions if isinstance(sessions, list) else ():
        kernel = session.get("kernel") if isinstance(session, dict) else None
        if isinstance(kernel, dict) and kernel.get("id") and session.get("path"):
            paths[str(kernel["id"])] = str(session["path"])
    found = []
    for model in kernels:
        try:
            kernel_id = str(model["id"])
            info = KernelInfo(
                id=kernel_id,
                name=str(model.get("name", "?")),
                execution_state=str(model.get("execution_state", "unknown")),
                last_activity=parse_timestamp(model.get("last_activity")),
                connections=int(model.get("connections", 0)),
                path=paths.get(kernel_id),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedAnswer(f"api/kernels: a kernel model is off-shape ({exc})") from None
        app_name = model.get("app_name")
        instance_type = model.get("instance_type")
        found.append(
            ClassicKernel(
                info,
                str(app_name) if app_name else None,
                str(instance_type) if instance_type else None,
            )
        )
    return tuple(found)


def parse_terminals(terminals: Any) -> tuple[TerminalInfo, ...]:
    if not isinstance(terminals, list):
        raise MalformedAnswer("api/terminals: expected a list")
    try:
        return tuple(TerminalInfo(str(t["name"]), parse_timestamp(t.get("last_activity"))) for t in terminals)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedAnswer(f"api/terminals: a terminal model is off-shape ({exc})") from None


def image_terminal_key(name: str) -> tuple[str, str] | None:
    """``(image ARN, instance type)`` of an image terminal's name; ``None`` for a system terminal."""
    if not name.startswith("arn:"):
        return None
    parts = name.split(SEPARATOR)
    if len(parts) < 3 or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


@dataclass(frozen=True)
class Placement:
    """What runs on one app."""

    kernels: tuple[KernelInfo, ...]
    terminals: tuple[TerminalInfo, ...]


def place(
    apps: Sequence[KernelGatewayApp], kernels: Iterable[ClassicKernel], terminals: Iterable[TerminalInfo]
) -> dict[str, Placement]:
    """Each app's kernels (by the kernel's ``app_name``) and image terminals (first app with the
    terminal's image and instance type, as Studio places them)."""
    on_app: dict[str, tuple[list[KernelInfo], list[TerminalInfo]]] = {a.app_name: ([], []) for a in apps}
    for kernel in kernels:
        if kernel.app_name in on_app:
            on_app[kernel.app_name][0].append(kernel.info)
    for terminal in terminals:
        key = image_terminal_key(terminal.name)
        if key is None:
            continue
        for app in apps:
            if (app.environment_arn, app.instance_type) == key:
                on_app[app.app_name][1].append(terminal)
                break
    return {name: Placement(tuple(k), tuple(t)) for name, (k, t) in on_app.items()}


# -- timeouts by instance type -------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceTimeouts:
    """Idle timeouts by instance-type pattern (``ml.g*=20m``); an app gets the shortest that matches,
    else the default."""

    default: timedelta
    patterns: tuple[tuple[str, timedelta], ...] = ()

    @classmethod
    def parse(cls, default: timedelta, entries: Iterable[str], *, setting: str) -> InstanceTimeouts:
        from lamplighter.settings import parse_setting

        patterns = []
        for entry in entries:
            pattern, sep, duration = entry.partition("=")
            if not sep or not pattern.strip():
                raise ConfigError(
                    f"{setting}: expected PATTERN=DURATION entries like 'ml.g*=20m', got {entry!r}"
                )
            patterns.append((pattern.strip(), parse_setting("idle_timeout", duration.strip(), setting)))
        return cls(default, tuple(patterns))

    def for_instance(self, instance_type: str) -> tuple[timedelta, str | None]:
        """The timeout for ``instance_type`` and the pattern it comes from (``None``: the default)."""
        matches = [(t, p) for p, t in self.patterns if fnmatch.fnmatchcase(instance_type, p)]
        return min(matches, key=lambda m: m[0]) if matches else (self.default, None)


# -- the verdict on one app ----------------------------------------------------------------------


@dataclass(frozen=True)
class _AppPolicy:
    """The settings, with the app's own idle timeout; culling single kernels and terminals is the
    server's agent's business, and a warning has no terminal of the app to go to."""

    base: PolicySettings
    idle_timeout: timedelta
    effective_startup_grace: timedelta

    @property
    def effective_probe_interval(self) -> timedelta:
        return min(self.base.effective_probe_interval, self.idle_timeout)

    @property
    def busy_recheck(self) -> timedelta:
        return self.base.busy_recheck

    @property
    def max_busy(self) -> timedelta | None:
        return self.base.max_busy

    @property
    def stuck_after(self) -> timedelta:
        return self.base.stuck_after

    @property
    def max_age(self) -> timedelta | None:
        return None  # a hub setting; a KernelGateway app is judged by its idle time only

    @property
    def ignore_connections(self) -> bool:
        return self.base.ignore_connections

    @property
    def skip_terminals(self) -> bool:
        return self.base.skip_terminals

    @property
    def keep_terminals(self) -> bool:
        return self.base.keep_terminals

    kernel_timeout: timedelta | None = None
    terminal_timeout: timedelta | None = None
    warn_before: timedelta | None = None
    unreachable_timeout: timedelta | None = None
    unreachable_action: str = "report"


def decide_app(
    app: KernelGatewayApp,
    placement: Placement,
    *,
    server_target: str,
    created_at: datetime,
    memory: Memory,
    settings: PolicySettings,
    timeouts: InstanceTimeouts,
    now: datetime,
    startup_grace: timedelta | None = None,
) -> Decision:
    """The verdict on one KernelGateway app: STOP means delete it.

    ``created_at`` is the app's creation time (or when it was first seen, where the source cannot
    say, or when it came up, where it was seen Pending): the app's "server start", from which an app that never had a kernel is measured, and
    protected for ``startup_grace`` (default: the app's own idle timeout).
    """
    timeout, pattern = timeouts.for_instance(app.instance_type)
    readings: list[ActivityReading] = []
    if app.status == "Pending":
        # Studio starts the kernel once the app is up: an app on its way up is never idle.
        readings.append(
            ActivityReading(
                "app status", Clock.WORK, now, f"{app.label} is starting (Pending)", active_now=True
            )
        )
    if settings.keep_terminals and placement.terminals:
        # keep_terminals: an open image terminal keeps its app, whatever its output says.
        readings.append(
            ActivityReading(
                "keep_terminals",
                Clock.INTERACTION,
                now,
                f"image terminal {placement.terminals[0].name} open (keep_terminals)",
                active_now=True,
            )
        )
    snapshot = ServerSnapshot(
        target=app_target(server_target, app.app_name),
        started=created_at,
        last_activity=created_at,
        connections=0,
        kernels=placement.kernels,
        terminals=placement.terminals,
        readings=tuple(readings),
    )
    grace = timeout if startup_grace is None else startup_grace
    decision = decide(snapshot, memory, _AppPolicy(settings, timeout, grace), now)
    why = f"idle timeout {format_duration(timeout)} for {app.instance_type}"
    why += f" (instance_idle_timeouts {pattern})" if pattern else " (idle_timeout)"
    return replace(decision, reasons=(*decision.reasons, f"{app.label}: {why}"))


def app_target(server_target: str, app_name: str) -> str:
    """The journal's name for one KernelGateway app of a server: ``{server}#KernelGateway/{name}``."""
    return f"{server_target}#KernelGateway/{app_name}"


def apps_from_list_apps(items: Iterable[Mapping[str, Any]]) -> tuple[KernelGatewayApp, ...]:
    """KernelGateway apps from ListApps' ``Apps`` that are (or are becoming) billed: Pending or InService."""
    apps = []
    for item in items:
        if item.get("AppType") != "KernelGateway" or item.get("Status") not in ("Pending", "InService"):
            continue
        spec = item.get("ResourceSpec") or {}
        created = item.get("CreationTime")
        try:
            created_at = parse_timestamp(created) if created else None
        except ValueError:
            created_at = None
        apps.append(
            KernelGatewayApp(
                app_name=str(item.get("AppName") or ""),
                environment_arn=str(spec.get("SageMakerImageArn") or ""),
                instance_type=str(spec.get("InstanceType") or ""),
                created_at=created_at,
                status=str(item.get("Status")),
            )
        )
    return tuple(apps)
