"""SageMaker Studio lifecycle configurations: render lamplighter's on-start script, install it on a domain.

:func:`render_on_start` fills ``templates/lcc-on-start.sh``: a script that installs lamplighter (from a
wheelhouse made by ``lamplighter lcc bundle``, an S3 prefix or a folder, or from a package index the
domain trusts) and keeps ``lamplighter watch --platform sagemaker`` running under a small restart loop,
with the AWS sample's setting names. lamplighter is not published on PyPI, so a script that would
install it from there is refused: whoever registered the name could run code as the app's role.

:func:`install_lcc` creates the studio lifecycle configuration (``CreateStudioLifecycleConfig``) and makes
it the default of a domain (``UpdateDomain``: ``DefaultUserSettings`` for private spaces and, for
JupyterLab, ``DefaultSpaceSettings`` for shared spaces) or of one user profile (``UpdateUserProfile``)
for its app type. SageMaker's API has no Code Editor settings in ``DefaultSpaceSettings``, which the
result says; it also reports SageMaker's own idle shutdown (``AppLifecycleManagement.IdleSettings``)
where it is enabled, since both then stop the app and the sooner wins. Lifecycle configurations cannot be changed once created, so the default name carries a hash of the
content: installing the same script again reuses the existing configuration. A dry run reads the current
settings and returns the write calls it would make, without making them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lamplighter import __version__
from lamplighter.errors import ConfigError, SageMakerCallFailed
from lamplighter.sagemaker.client import call, sagemaker_client
from lamplighter.sagemaker.identity import jupyter_base_url

__all__ = [
    "LCC_APP_TYPES",
    "MAX_CONTENT_CHARS",
    "NOTEBOOK_INSTANCE",
    "ApiCall",
    "InstallResult",
    "RenderOptions",
    "default_lcc_name",
    "install_lcc",
    "render_on_start",
]

LCC_APP_TYPES = ("JupyterLab", "CodeEditor", "JupyterServer")
#: ``RenderOptions.app_type`` of a notebook instance's on-start script (not a Studio app type).
NOTEBOOK_INSTANCE = "NotebookInstance"
MAX_CONTENT_CHARS = 16384  # StudioLifecycleConfigContent, base64-encoded
_SETTINGS_KEY = {
    "JupyterLab": "JupyterLabAppSettings",
    "CodeEditor": "CodeEditorAppSettings",
    # Studio Classic: the JupyterServer app, where the AWS auto-shutdown extension was installed.
    "JupyterServer": "JupyterServerAppSettings",
}
# What SageMaker's DefaultSpaceSettings can hold (botocore's sagemaker model): no CodeEditorAppSettings.
_SPACE_SETTINGS_KEYS = ("JupyterLabAppSettings",)
# Values land inside "${VAR:-value}" in the script: nothing that quoting or expansion would touch.
_SHELL_SAFE = re.compile(r"""^[^"'$`\\}\s;&|<>()]*$""")
_LCC_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


@dataclass(frozen=True)
class RenderOptions:
    """What the on-start script sets; every value can still be overridden by editing the script."""

    app_type: str
    idle_time_s: int = 3600
    ignore_connections: bool = True
    skip_terminals: bool = False
    package: str = f"lamplighter[sagemaker]=={__version__}"
    wheelhouse: str = ""  # s3://bucket/prefix/ or a folder made by `lamplighter lcc bundle`
    index_url: str = ""  # a package index that serves lamplighter (a private mirror)
    log_file: str = "/var/log/apps/app_container.log"
    install_budget_s: int = 120  # past this the install carries on in the background
    notebook_instance: str = ""  # with app_type NOTEBOOK_INSTANCE: the instance's name ("": its metadata)


def render_on_start(options: RenderOptions) -> str:
    """The on-start script for ``options.app_type``; raises ``ConfigError`` for a value the script cannot hold."""
    if options.app_type not in (*LCC_APP_TYPES, NOTEBOOK_INSTANCE):
        raise ConfigError(f"app type: expected one of {', '.join(LCC_APP_TYPES)}, got {options.app_type!r}")
    if options.idle_time_s <= 0:
        raise ConfigError("idle time: must be more than 0 seconds")
    for name, value in (
        ("package", options.package),
        ("wheelhouse", options.wheelhouse),
        ("index url", options.index_url),
        ("log file", options.log_file),
        ("notebook instance", options.notebook_instance),
    ):
        if not _SHELL_SAFE.match(value):
            raise ConfigError(f"{name}: {value!r} has quotes, spaces or shell characters")
    if not options.package:
        raise ConfigError("package: must not be empty")
    if not (options.wheelhouse or options.index_url):
        raise ConfigError(
            "lamplighter is not published on PyPI: build a wheelhouse with `lamplighter lcc bundle --to "
            "s3://bucket/prefix` and pass --wheelhouse, or pass --index-url of a mirror that serves it"
        )
    if not 1 <= options.install_budget_s <= 240:
        raise ConfigError(
            "install budget: 1 to 240 seconds (SageMaker stops a lifecycle script at 5 minutes)"
        )
    studio = {
        "WHAT": f"SageMaker Studio {options.app_type} app",
        "RENDERED_BY": f"--app-type {options.app_type}",
        "PLATFORM": "sagemaker",
        "PYTHON": "/opt/conda/bin/python",
        "ROLE_NEEDS": "sagemaker:DeleteApp (and sagemaker:DescribeApp to verify the stop)",
    }
    if options.app_type == NOTEBOOK_INSTANCE:
        # The notebook instance's own Jupyter server (https://localhost:8443) is the platform's default.
        jupyter = (
            'export LAMPLIGHTER_NOTEBOOK_INSTANCE="${LAMPLIGHTER_NOTEBOOK_INSTANCE:-'
            f'{options.notebook_instance}}}"  # empty: ResourceName of /opt/ml/metadata/resource-metadata.json\n'
        )
        studio = {
            "WHAT": "SageMaker notebook instance",
            "RENDERED_BY": f"--notebook-instance {options.notebook_instance or 'NAME'}",
            "PLATFORM": "sagemaker-notebook-instance",
            # The instance's system environment, as the AWS autostop sample picks it (boto3 is there).
            "PYTHON": "/home/ec2-user/anaconda3/envs/JupyterSystemEnv/bin/python",
            "ROLE_NEEDS": "sagemaker:StopNotebookInstance and sagemaker:DescribeNotebookInstance",
        }
    elif options.app_type in ("JupyterLab", "JupyterServer"):
        jupyter = (
            'export JL_HOSTNAME="${JL_HOSTNAME:-0.0.0.0}"  # where the app\'s Jupyter server listens\n'
            'export JL_PORT="${JL_PORT:-8888}"\n'
            f'export JL_BASE_URL="${{JL_BASE_URL:-{jupyter_base_url(options.app_type)}}}"\n'
        )
    if options.app_type == "JupyterServer":
        # Studio Classic: the agent in the free JupyterServer app deletes the idle, billed KernelGateway apps.
        jupyter += (
            'export LAMPLIGHTER_KEEP_TERMINALS="${KEEP_TERMINALS:-False}"'
            "  # True: an open image terminal keeps its KernelGateway app (billed)\n"
            'export LAMPLIGHTER_INSTANCE_IDLE_TIMEOUTS="${INSTANCE_IDLE_TIMEOUTS:-}"'
            "  # e.g. ml.g*=20m,ml.p*=15m: shorter for GPU instances\n"
        )
    if options.app_type == "CodeEditor":
        jupyter = (
            'export LAMPLIGHTER_APP_TYPE="${LAMPLIGHTER_APP_TYPE:-code-editor}"'
            "  # no Jupyter API: watch files, the editor and processes\n"
        )
    template = resources.files("lamplighter.sagemaker").joinpath("templates/lcc-on-start.sh").read_text()
    values = {
        "APP_TYPE": options.app_type,
        "VERSION": __version__,
        "IDLE_TIME_IN_SECONDS": str(int(options.idle_time_s)),
        "IGNORE_CONNECTIONS": str(bool(options.ignore_connections)),
        "SKIP_TERMINALS": str(bool(options.skip_terminals)),
        "PACKAGE": options.package,
        "WHEELHOUSE": options.wheelhouse,
        "INDEX_URL": options.index_url,
        "INSTALL_BUDGET_S": str(int(options.install_budget_s)),
        "LOG_FILE": options.log_file,
        **studio,
    }
    script = template.replace("@JUPYTER_SETTINGS@\n", jupyter)
    for key, value in values.items():
        script = script.replace(f"@{key}@", value)
    leftover = re.search(r"@[A-Z_]+@", script)
    if leftover:  # pragma: no cover - a template edit forgot a value
        raise ConfigError(f"the on-start template has an unfilled {leftover.group(0)}")
    return script


def default_lcc_name(app_type: str, script: str) -> str:
    """``lamplighter-jupyterlab-1a2b3c4d``: configurations are immutable, so the name follows the content."""
    digest = hashlib.sha256(script.encode()).hexdigest()[:8]
    return f"lamplighter-{app_type.lower()}-{digest}"


@dataclass(frozen=True)
class ApiCall:
    """One SageMaker API call, as made or as planned."""

    operation: str
    params: dict[str, Any]

    def display(self) -> dict[str, Any]:
        """The parameters with the script content shortened, for printing."""
        shown = copy.deepcopy(self.params)
        content = shown.get("StudioLifecycleConfigContent")
        if isinstance(content, str):
            shown["StudioLifecycleConfigContent"] = f"<base64 on-start script, {len(content)} chars>"
        for hook in shown.get("OnStart") or []:  # a notebook instance's lifecycle configuration
            if isinstance(hook, dict) and isinstance(hook.get("Content"), str):
                hook["Content"] = f"<base64 on-start script, {len(hook['Content'])} chars>"
        return shown


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_lcc` did (or, in a dry run, would do)."""

    lcc_name: str
    lcc_arn: str
    reused: bool  # an identical configuration already existed
    target: str  # "domain d-abc" or "user profile alice in d-abc"
    calls: tuple[ApiCall, ...]  # the write calls, in order
    dry_run: bool
    notes: tuple[str, ...] = ()  # what a person should know: shared spaces, SageMaker's idle shutdown


async def install_lcc(
    script: str,
    *,
    domain_id: str,
    app_type: str,
    user_profile: str | None = None,
    name: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    client: Any | None = None,
) -> InstallResult:
    """Create the lifecycle configuration and make it the default for ``app_type`` apps.

    Other settings of the domain or profile (images, repositories, other lifecycle configurations) are
    kept: the app settings are read, the configuration added, and the whole structure written back.
    """
    if app_type not in LCC_APP_TYPES:
        raise ConfigError(f"app type: expected one of {', '.join(LCC_APP_TYPES)}, got {app_type!r}")
    name = name or default_lcc_name(app_type, script)
    if not _LCC_NAME.match(name):
        raise ConfigError(f"name: {name!r} is not a valid lifecycle configuration name (letters, digits, -)")
    content = base64.b64encode(script.encode()).decode()
    if len(content) > MAX_CONTENT_CHARS:
        raise ConfigError(
            f"the script is {len(content)} base64 characters; SageMaker takes {MAX_CONTENT_CHARS}"
        )
    client = client or sagemaker_client(region=region, endpoint_url=endpoint_url)
    key = _SETTINGS_KEY[app_type]

    domain = await call(client, "DescribeDomain", DomainId=domain_id)
    notes: list[str] = []
    space_defaults: dict[str, Any] | None = None
    if user_profile:
        profile = await call(client, "DescribeUserProfile", DomainId=domain_id, UserProfileName=user_profile)
        current = (profile.get("UserSettings") or {}).get(key) or {}
        target = f"user profile {user_profile} in {domain_id}"
        notes += _native_idle(current, f"user profile {user_profile}")
    else:
        current = (domain.get("DefaultUserSettings") or {}).get(key) or {}
        target = f"domain {domain_id}"
        notes += _native_idle(current, "the domain's user defaults")
        if key in _SPACE_SETTINGS_KEYS:
            space_defaults = copy.deepcopy(domain.get("DefaultSpaceSettings") or {})
            notes += _native_idle(space_defaults.get(key) or {}, "the domain's shared-space defaults")
            target += " (user and shared-space defaults)"
        else:
            notes.append(
                f"shared spaces: SageMaker's DefaultSpaceSettings has no {key}, so shared spaces' "
                f"{app_type} apps do not get this configuration by default"
            )

    calls: list[ApiCall] = []
    existing = await _describe_lcc(client, name)
    if existing is None:
        arn = _lcc_arn(str(domain.get("DomainArn") or ""), name)
        calls.append(
            ApiCall(
                "CreateStudioLifecycleConfig",
                {
                    "StudioLifecycleConfigName": name,
                    "StudioLifecycleConfigContent": content,
                    "StudioLifecycleConfigAppType": app_type,
                },
            )
        )
    else:
        if existing.get("StudioLifecycleConfigContent") != content or (
            existing.get("StudioLifecycleConfigAppType") != app_type
        ):
            raise ConfigError(
                f"a lifecycle configuration named {name} already exists with other content or app type; "
                "configurations cannot be changed: pass another --name"
            )
        arn = str(existing["StudioLifecycleConfigArn"])

    settings = _with_default_lcc(current, arn)
    if user_profile:
        calls.append(
            ApiCall(
                "UpdateUserProfile",
                {"DomainId": domain_id, "UserProfileName": user_profile, "UserSettings": {key: settings}},
            )
        )
    else:
        update: dict[str, Any] = {"DomainId": domain_id, "DefaultUserSettings": {key: settings}}
        if space_defaults is not None:
            # Written whole: the rest of the shared-space defaults (execution role, storage) is kept.
            space_defaults[key] = _with_default_lcc(space_defaults.get(key) or {}, arn)
            update["DefaultSpaceSettings"] = space_defaults
        calls.append(ApiCall("UpdateDomain", update))

    if not dry_run:
        for planned in calls:
            answer = await call(client, planned.operation, **planned.params)
            if planned.operation == "CreateStudioLifecycleConfig":
                arn = str(answer.get("StudioLifecycleConfigArn") or arn)
    return InstallResult(name, arn, existing is not None, target, tuple(calls), dry_run, tuple(notes))


def _native_idle(app_settings: dict[str, Any], where: str) -> list[str]:
    """A note when SageMaker's own idle shutdown is enabled in these app settings."""
    idle = (app_settings.get("AppLifecycleManagement") or {}).get("IdleSettings") or {}
    if idle.get("LifecycleManagement") != "ENABLED":
        return []
    minutes = idle.get("IdleTimeoutInMinutes")
    after = f"after {minutes} idle minutes" if minutes else "at its default timeout"
    return [
        f"SageMaker's own idle shutdown is enabled in {where} ({after}); both it and lamplighter stop "
        "idle apps and the sooner wins; SageMaker's counts only JupyterLab/Code Editor activity it sees, "
        "lamplighter also keeps apps with running work"
    ]


async def _describe_lcc(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return await call(client, "DescribeStudioLifecycleConfig", StudioLifecycleConfigName=name)
    except SageMakerCallFailed as exc:
        if exc.code == "ResourceNotFound":
            return None
        raise


def _lcc_arn(domain_arn: str, name: str) -> str:
    """The ARN a new configuration will get: same partition, region and account as the domain."""
    parts = domain_arn.split(":")
    if len(parts) < 6:
        return f"arn:aws:sagemaker:<region>:<account>:studio-lifecycle-config/{name}"
    return f"arn:{parts[1]}:sagemaker:{parts[3]}:{parts[4]}:studio-lifecycle-config/{name}"


def _with_default_lcc(current: dict[str, Any], arn: str) -> dict[str, Any]:
    """The app settings with ``arn`` allowed and made the default, everything else kept."""
    settings = copy.deepcopy(current)
    arns = [a for a in settings.get("LifecycleConfigArns") or [] if a != arn]
    settings["LifecycleConfigArns"] = [*arns, arn]
    spec = dict(settings.get("DefaultResourceSpec") or {})
    spec["LifecycleConfigArn"] = arn
    settings["DefaultResourceSpec"] = spec
    return settings
