"""The one settings object: every option declared once, with its type, default, unit and help.

Precedence: defaults < TOML file < environment variables < command-line flags. Environment variables
use the prefix ``LAMPLIGHTER_``; the AWS auto-stop sample's names (``IDLE_TIME_IN_SECONDS``,
``IGNORE_CONNECTIONS``, ``SKIP_TERMINALS``, ``JL_HOSTNAME``, ``JL_PORT``, ``JL_BASE_URL``) are read
too, so an existing lifecycle script switches over unchanged. CLI flags and the README's table are
generated from the declarations below. Derived defaults are computed in :func:`_derive` only.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from lamplighter.errors import ConfigError
from lamplighter.redaction import hide, redact
from lamplighter.server_url import split_server_url, url_credentials

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ACTIONS",
    "APP_TYPES",
    "DURATION_EXPECTED",
    "MAX_DURATION",
    "PLATFORMS",
    "SAGEMAKER_APP_TYPES",
    "Settings",
    "app_type_name",
    "default_journal_path",
    "describe_bounds",
    "duration_text",
    "load_settings",
    "option_specs",
    "parse_bool",
    "parse_duration",
    "parse_setting",
    "secret_variables",
]

ACTIONS = ("shutdown", "command", "none")
PLATFORMS = ("jupyter", "sagemaker", "jupyterhub", "sagemaker-notebook-instance")
#: The one set of app types every ``--app-type`` takes ('jupyter-server' is Studio Classic's app, watched
#: like 'jupyter'); SageMaker's own names for them are accepted too, in any case.
APP_TYPES = ("jupyter", "jupyter-server", "code-editor")
SAGEMAKER_APP_TYPES = {
    "jupyter": "JupyterLab",
    "jupyter-server": "JupyterServer",
    "code-editor": "CodeEditor",
}
_APP_TYPE_ALIASES = {name.lower(): ours for ours, name in SAGEMAKER_APP_TYPES.items()}
UNREACHABLE_ACTIONS = ("report", "stop")
PROCESS_SCOPES = ("auto", "tree", "user", "container")
LOG_LEVELS = ("debug", "info", "warning", "error")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_OFF = {"off", "none", "never", "0", "false", "no", ""}

#: What a duration may look like, for error lines and help.
DURATION_EXPECTED = "a duration like 90, 90s, 15m or 2h"

#: No duration is longer: anything added to a date stays far from ``datetime.max`` (year 9999).
MAX_DURATION = timedelta(days=3650)


def parse_duration(text: object) -> timedelta:
    """Plain seconds or ``90s``/``15m``/``2h``/``1d``, from 0 to :data:`MAX_DURATION`; raises ``ValueError``.

    Each setting checks its own, narrower range (:func:`describe_bounds`); this cap only guarantees
    that no parsed duration overflows date arithmetic later.
    """
    if isinstance(text, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError("not a duration")
        seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("not a finite, non-negative duration")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("longer than ten years")
    return timedelta(seconds=seconds)


def _parse_optional_duration(text: object) -> timedelta | None:
    if text is None or (isinstance(text, str) and text.strip().lower() in _OFF) or text == 0:
        return None
    return parse_duration(text)


def parse_bool(text: object) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` in any case (the AWS scripts write ``True``)."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _parse_str(text: object) -> str:
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        raise ValueError("not a string")
    return str(text)


def _parse_optional_str(text: object) -> str | None:
    value = _parse_str(text)
    return value or None


def _parse_path(text: object) -> Path:
    return Path(os.path.expanduser(_parse_str(text)))


def _parse_optional_path(text: object) -> Path | None:
    value = _parse_str(text)
    return Path(os.path.expanduser(value)) if value.strip().lower() not in _OFF else None


def _parse_share(text: object) -> float:
    """``0.1`` or ``10%``: a share of one core or device."""
    if isinstance(text, bool):
        raise ValueError("a share, not a boolean")
    raw = str(text).strip()
    return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)


def _parse_optional_int(text: object) -> int | None:
    if text is None or (isinstance(text, str) and text.strip().lower() in _OFF - {"0"}):
        return None
    if isinstance(text, bool):
        raise ValueError("a number, not a boolean")
    return int(str(text).strip())


def _parse_int(text: object) -> int:
    if isinstance(text, bool):
        raise ValueError("a number, not a boolean")
    return int(str(text).strip())


def _parse_list(text: object) -> tuple[str, ...]:
    """A TOML list, or a comma-separated string."""
    items = text if isinstance(text, list | tuple) else str(text).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _parse_paths(text: object) -> tuple[Path, ...]:
    return tuple(Path(os.path.expanduser(item)) for item in _parse_list(text))


def app_type_name(text: str) -> str:
    """An app type in lamplighter's words: ``JupyterLab`` -> ``jupyter``; other text comes back lowered."""
    value = text.strip().lower()
    return _APP_TYPE_ALIASES.get(value, value)


def _choice(*allowed: str, aliases: Mapping[str, str] | None = None) -> Callable[[object], str]:
    def parse(text: object) -> str:
        value = _parse_str(text).strip().lower()
        value = (aliases or {}).get(value, value)
        if value not in allowed:
            raise ValueError("not one of the choices")
        return value

    parse.choices = allowed  # type: ignore[attr-defined]
    return parse


_EXPECTED: dict[Callable[[object], Any], str] = {
    parse_duration: DURATION_EXPECTED,
    _parse_optional_duration: f"{DURATION_EXPECTED}, or 'off'",
    parse_bool: "true or false",
    _parse_str: "a string",
    _parse_optional_str: "a string",
    _parse_path: "a path",
    _parse_optional_path: "a path, or 'off'",
    _parse_share: "a share of one core or device, like 0.1 or 10%",
    _parse_optional_int: "a whole number, or 'off'",
    _parse_list: "a comma-separated list",
    _parse_paths: "a comma-separated list of paths",
}


def _opt(
    default: Any,
    help: str,
    *,
    parse: Callable[[object], Any],
    group: str,
    env: tuple[str, ...] = (),
    secret: bool = False,
    flag: bool = True,
    negative: str | None = None,
    bounds: tuple[Any, Any] | None = None,
) -> Any:
    # A callable default is a factory (the journal path depends on the environment at load time).
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return field(
        **kind,
        metadata={
            "help": help,
            "parse": parse,
            "group": group,
            "env": env,
            "secret": secret,
            "flag": flag,
            "negative": negative,
            "bounds": bounds,
        },
    )


_DAY = timedelta(days=1)
_YEAR = timedelta(days=365)
_LONG = (timedelta(seconds=1), _YEAR)  # a timeout a person sets: a second to a year


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/lamplighter/journal.sqlite3`` (``~/.local/state/...`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "lamplighter" / "journal.sqlite3"


@dataclass(frozen=True)
class Settings:
    """Every option lamplighter has. Build it with :func:`load_settings`, never by hand in commands."""

    # -- the target ---------------------------------------------------------------------------
    url: str | None = _opt(
        None,
        "URL of the Jupyter server, base path included, e.g. http://127.0.0.1:8888/jupyterlab/default/.",
        parse=_parse_optional_str,
        group="target",
    )
    token: str | None = _opt(
        None,
        "API token of the server. Visible in process lists: prefer LAMPLIGHTER_TOKEN or --token-file.",
        parse=_parse_optional_str,
        group="target",
        env=("LAMPLIGHTER_TOKEN", "JUPYTER_TOKEN"),
        secret=True,
    )
    token_file: Path | None = _opt(
        None, "File holding the API token (first line).", parse=_parse_optional_path, group="target"
    )
    cookies: str | None = _opt(
        None,
        "Login cookies instead of a token, as 'name=value; name2=value2' (a browser or hub login).",
        parse=_parse_optional_str,
        group="target",
        secret=True,
    )
    verify_tls: bool = _opt(
        True,
        "Verify the server's TLS certificate; turn off only for a self-signed test server.",
        parse=parse_bool,
        group="target",
        negative="insecure",
    )
    request_timeout: timedelta = _opt(
        timedelta(seconds=10),
        "Time budget for one HTTP request to the server.",
        parse=parse_duration,
        group="target",
        bounds=(timedelta(milliseconds=100), timedelta(minutes=10)),
    )
    platform: str = _opt(
        "jupyter",
        "Kind of app: 'jupyter' (stop with POST /api/shutdown), 'sagemaker' (stop with DeleteApp) or "
        "'sagemaker-notebook-instance' (stop with StopNotebookInstance).",
        parse=_choice(*PLATFORMS),
        group="target",
    )
    app_type: str = _opt(
        "jupyter",
        "What to observe: 'jupyter' (its REST API; 'jupyter-server', Studio Classic's app, the same) or "
        "'code-editor' (file, editor and process activity); SageMaker's names JupyterLab, JupyterServer "
        "and CodeEditor are accepted too.",
        parse=_choice(*APP_TYPES, aliases=_APP_TYPE_ALIASES),
        group="target",
    )
    sagemaker_metadata: Path = _opt(
        Path("/opt/ml/metadata/resource-metadata.json"),
        "SageMaker app metadata file that names the domain, space and app.",
        parse=_parse_path,
        group="sagemaker",
    )
    sagemaker_endpoint_url: str | None = _opt(
        None,
        "SageMaker API endpoint override (a VPC endpoint, or a test emulator).",
        parse=_parse_optional_str,
        group="sagemaker",
    )
    region: str | None = _opt(
        None,
        "AWS region; default from the app metadata or the AWS config.",
        parse=_parse_optional_str,
        group="sagemaker",
        env=("LAMPLIGHTER_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    # -- JupyterHub (lamplighter hub, and watch behind a hub) -----------------------------------
    hub_url: str | None = _opt(
        None,
        "URL of the hub's REST API, e.g. http://127.0.0.1:8081/hub/api (a hub-managed service gets "
        "JUPYTERHUB_API_URL).",
        parse=_parse_optional_str,
        group="hub",
        env=("LAMPLIGHTER_HUB_URL", "JUPYTERHUB_API_URL"),
    )
    hub_token: str | None = _opt(
        None,
        "The service's hub API token; a hub-managed service gets it as JUPYTERHUB_API_TOKEN. Visible in "
        "process lists as a flag: prefer the environment.",
        parse=_parse_optional_str,
        group="hub",
        env=("LAMPLIGHTER_HUB_TOKEN", "JUPYTERHUB_API_TOKEN"),
        secret=True,
    )
    cull_every: timedelta | None = _opt(
        None,
        "Longest time between two lists of the hub's servers: a server started meanwhile is watched "
        "from the next list on (default: a tenth of idle_timeout, 1 s to 5 min; jupyterhub-idle-culler's name).",
        parse=_parse_optional_duration,
        group="hub",
        bounds=(timedelta(milliseconds=100), _DAY),
    )
    concurrency: int = _opt(
        10,
        "At most this many requests to the hub and its servers at once, across all users.",
        parse=_parse_int,
        group="hub",
        bounds=(1, 1000),
    )
    api_page_size: int | None = _opt(
        None,
        "Users per page when listing the hub (default: the hub's own page size).",
        parse=_parse_optional_int,
        group="hub",
        bounds=(1, 10_000),
    )
    remove_named_servers: bool = _opt(
        False,
        "Remove a named server from the hub when it is stopped, not only stop it.",
        parse=parse_bool,
        group="hub",
    )
    cull_default_servers: bool = _opt(
        True, "Watch and stop users' default servers.", parse=parse_bool, group="hub"
    )
    cull_named_servers: bool = _opt(
        True, "Watch and stop users' named servers.", parse=parse_bool, group="hub"
    )
    group_idle_timeouts: tuple[str, ...] = _opt(
        (),
        "Idle timeouts by hub group, as 'gpu=15m,students=2h'; a member of several groups gets the shortest.",
        parse=_parse_list,
        group="hub",
    )
    profile_idle_timeouts: tuple[str, ...] = _opt(
        (),
        "Idle timeouts by spawner profile (the server's user_options 'profile'), as 'gpu-large=15m'; the "
        "shortest of group, profile and idle_timeout applies.",
        parse=_parse_list,
        group="hub",
    )
    veto_hook: str | None = _opt(
        None,
        "A Python callable 'module:function' asked before each stop with (server model, user model, "
        "decision); it may be async and returns 'keep' or 'stop' (or False/True).",
        parse=_parse_optional_str,
        group="hub",
    )
    max_age: timedelta | None = _opt(
        None,
        "Stop a server this long after its start even while somebody interacts with it, but never while "
        "work runs in it (then as soon as the work ends); with cull_users, delete a server-less user this "
        "long after its creation (default off; jupyterhub-idle-culler's name).",
        parse=_parse_optional_duration,
        group="hub",
        bounds=_LONG,
    )
    cull_users: bool = _opt(
        False,
        "Delete users with no server running once inactive for idle_timeout (or older than max_age), as "
        "jupyterhub-idle-culler does for temporary users; needs the scope admin:users.",
        parse=parse_bool,
        group="hub",
    )
    cull_admin_users: bool = _opt(
        True,
        "With cull_users, delete admin users too (off: never delete an admin).",
        parse=parse_bool,
        group="hub",
    )
    ssl_enabled: bool = _opt(
        False,
        "The hub runs with internal_ssl: talk to it and to its servers with the hub's hub-internal client "
        "certificate from internal_certs_location (jupyterhub-idle-culler's --ssl-enabled).",
        parse=parse_bool,
        group="hub",
    )
    internal_certs_location: Path = _opt(
        Path("internal-ssl"),
        "The hub's internal_certs_location, with ssl_enabled: hub-internal/hub-internal.{key,crt} and "
        "hub-ca_trust.crt are read from there (relative: to the service's working directory).",
        parse=_parse_path,
        group="hub",
    )

    # -- JupyterHub service reports (the in-server extension reports to lamplighter hub) --------
    service_url: str | None = _opt(
        None,
        "Where lamplighter hub listens for the extension's reports and serves its status page and "
        "metrics, e.g. http://127.0.0.1:10101 (port 0: any free port; a hub-managed service with a "
        "'url' gets JUPYTERHUB_SERVICE_URL); unset: no listener, every server is probed.",
        parse=_parse_optional_str,
        group="hub_service",
        env=("LAMPLIGHTER_SERVICE_URL", "JUPYTERHUB_SERVICE_URL"),
    )
    service_prefix: str = _opt(
        "/",
        "The path lamplighter hub serves under (a hub-managed service gets JUPYTERHUB_SERVICE_PREFIX, "
        "/services/NAME/).",
        parse=_parse_str,
        group="hub_service",
        env=("LAMPLIGHTER_SERVICE_PREFIX", "JUPYTERHUB_SERVICE_PREFIX"),
    )
    report_to: str | None = _opt(
        None,
        "In a hub user's server: the lamplighter hub service's URL to report this server's verdict to "
        "(its service_url and prefix); the service then stops the server and does not probe it.",
        parse=_parse_optional_str,
        group="hub_service",
    )
    report_interval: timedelta = _opt(
        timedelta(seconds=60),
        "In a hub user's server: report at least this often; the service probes the server itself once "
        "no report came for twice this long.",
        parse=parse_duration,
        group="hub_service",
        bounds=(timedelta(milliseconds=100), _DAY),
    )

    # -- the policy ---------------------------------------------------------------------------
    idle_timeout: timedelta = _opt(
        timedelta(hours=1),
        "Stop the app after this long with nobody interacting and nothing working.",
        parse=parse_duration,
        group="policy",
        env=("LAMPLIGHTER_IDLE_TIMEOUT", "IDLE_TIME_IN_SECONDS"),
        bounds=_LONG,
    )
    startup_grace: timedelta | None = _opt(
        None,
        "A freshly started app is never stopped before this long after its start (default: the idle timeout).",
        parse=_parse_optional_duration,
        group="policy",
        bounds=(timedelta(0), _YEAR),  # 0s: no grace at all (off, or 0, means the idle timeout)
    )
    ignore_connections: bool = _opt(
        True,
        "Treat open browser connections to an idle kernel as idle (off: an open notebook tab keeps the app).",
        parse=parse_bool,
        group="policy",
        env=("LAMPLIGHTER_IGNORE_CONNECTIONS", "IGNORE_CONNECTIONS"),
        negative="count-connections",
    )
    skip_terminals: bool = _opt(
        False,
        "Leave terminal activity out of the verdict.",
        parse=parse_bool,
        group="policy",
        env=("LAMPLIGHTER_SKIP_TERMINALS", "SKIP_TERMINALS"),
    )
    max_busy: timedelta | None = _opt(
        None,
        "A kernel busy longer than this stops counting as work (default off: a busy kernel always keeps the app).",
        parse=_parse_optional_duration,
        group="policy",
        bounds=_LONG,
    )
    stuck_after: timedelta = _opt(
        timedelta(minutes=10),
        "A kernel stuck starting, restarting or in an unknown state this long stops counting as work.",
        parse=parse_duration,
        group="policy",
        bounds=_LONG,
    )
    busy_recheck: timedelta = _opt(
        timedelta(seconds=30),
        "While work is running, look again after this long (never later than the idle timeout).",
        parse=parse_duration,
        group="policy",
        bounds=(timedelta(milliseconds=100), _DAY),
    )
    probe_interval: timedelta | None = _opt(
        None,
        "Longest sleep between two probes: a kernel or terminal that starts and ends within it can go "
        "unseen (default: a tenth of idle_timeout, 0.2 s to 1 min).",
        parse=_parse_optional_duration,
        group="policy",
        bounds=(timedelta(milliseconds=100), _DAY),
    )
    kernel_timeout: timedelta | None = _opt(
        None,
        "Shut down single kernels idle this long (default off).",
        parse=_parse_optional_duration,
        group="policy",
        bounds=_LONG,
    )
    terminal_timeout: timedelta | None = _opt(
        None,
        "Close single terminals idle this long (default off).",
        parse=_parse_optional_duration,
        group="policy",
        bounds=_LONG,
    )
    keep_terminals: bool = _opt(
        False, "Never close terminals, even past terminal_timeout.", parse=parse_bool, group="policy"
    )
    unreachable_timeout: timedelta | None = _opt(
        None,
        "After the server has been unreachable this long, apply unreachable_action (default off: only report).",
        parse=_parse_optional_duration,
        group="policy",
        bounds=_LONG,
    )
    unreachable_action: str = _opt(
        "report",
        "What to do once unreachable_timeout has passed: 'report' (journal it) or 'stop' (run the stop action).",
        parse=_choice(*UNREACHABLE_ACTIONS),
        group="policy",
    )

    # -- the signals --------------------------------------------------------------------------
    process_signal: bool = _opt(
        True,
        "Count sustained CPU use in the server's process tree (kernels, terminals, nohup jobs) as work; "
        "needs the server on this machine.",
        parse=parse_bool,
        group="signals",
    )
    server_pid: int | None = _opt(
        None,
        "Pid of the server whose process tree counts (default: the process listening on the URL's port).",
        parse=_parse_optional_int,
        group="signals",
        bounds=(1, 4_194_304),
    )
    cpu_threshold: float = _opt(
        0.1,
        "Share of one core (0.1 or 10%) that makes a process-tree sample busy.",
        parse=_parse_share,
        group="signals",
        bounds=(0.001, 64.0),
    )
    process_window: timedelta | None = _opt(
        None,
        "The busy test looks at this much history; two busy samples in it count as work, one spike never "
        "does (default: half of idle_timeout, 4 samples to 10 min).",
        parse=_parse_optional_duration,
        group="signals",
        bounds=(timedelta(milliseconds=100), _DAY),
    )
    process_sample_interval: timedelta | None = _opt(
        None,
        "Time between two process-tree samples (default: a tenth of idle_timeout, 0.1 s to 10 s).",
        parse=_parse_optional_duration,
        group="signals",
        bounds=(timedelta(milliseconds=50), timedelta(hours=1)),
    )
    process_scope: str = _opt(
        "auto",
        "Processes that count besides the server's tree: 'tree' (none), 'user' (the server user's own, "
        "never root's), 'container' (every process of this container), 'auto' (container inside one, "
        "else user unless the server runs as root, else tree).",
        parse=_choice(*PROCESS_SCOPES),
        group="signals",
    )
    include_user_processes: bool = _opt(
        False,
        "Same as process_scope=user (kept for existing configurations).",
        parse=parse_bool,
        group="signals",
    )
    process_ignore: tuple[str, ...] = _opt(
        (),
        "Extra process name/command globs never counted as work (comma-separated).",
        parse=_parse_list,
        group="signals",
    )
    gpu_signal: bool = _opt(
        False,
        "Count GPU use through NVML as work (needs the [gpu] extra).",
        parse=parse_bool,
        group="signals",
    )
    gpu_threshold: float = _opt(
        0.05,
        "Share of one GPU that makes a sample busy.",
        parse=_parse_share,
        group="signals",
        bounds=(0.001, 64.0),
    )
    watch_paths: tuple[Path, ...] = _opt(
        (),
        "Folders whose file changes count as interaction (comma-separated).",
        parse=_parse_paths,
        group="signals",
    )
    watch_ignore: tuple[str, ...] = _opt(
        (),
        "Extra globs of file changes that never count (comma-separated).",
        parse=_parse_list,
        group="signals",
    )
    code_server_healthz: str | None = _opt(
        None,
        "code-server's /healthz URL, read as editor activity with --app-type code-editor.",
        parse=_parse_optional_str,
        group="signals",
    )
    editor_port: int | None = _opt(
        None,
        "Port of the Code Editor / code-server process (its start is the app's start; its tree counts as work).",
        parse=_parse_optional_int,
        group="signals",
        bounds=(1, 65535),
    )
    code_editor_data_dir: Path | None = _opt(
        None,
        "Code Editor's server-data folder, whose data/User/History and Backups show edits [auto: "
        "~sagemaker-user/sagemaker-code-editor-server-data, else /opt/amazon/sagemaker/…, whichever exists].",
        parse=_parse_optional_path,
        group="signals",
    )

    # -- the action ---------------------------------------------------------------------------
    action: str = _opt(
        "shutdown",
        "How to stop an idle app: 'shutdown' (the platform's stop), 'command' (run --command), 'none' (report).",
        parse=_choice(*ACTIONS),
        group="action",
    )
    command: str | None = _opt(
        None,
        "Shell command run by --action command; gets LAMPLIGHTER_TARGET, _REASON, _REASONS, _IDLE_SINCE, "
        "_STOP_AT and the environment without lamplighter's secrets.",
        parse=_parse_optional_str,
        group="action",
    )
    dry_run: bool = _opt(
        False, "Log and journal what would be done; do nothing.", parse=parse_bool, group="action"
    )
    stop_verify_timeout: timedelta = _opt(
        timedelta(seconds=30),
        "How long to wait for a stopped app to go away before counting it as 'still stopping'.",
        parse=parse_duration,
        group="action",
        bounds=(timedelta(0), timedelta(hours=1)),
    )

    warn_before: timedelta | None = _opt(
        None,
        "Warn this long before the stop (default off): runs --warn-command, or writes a notice to every open "
        "terminal and to --notice-file.",
        parse=_parse_optional_duration,
        group="action",
        bounds=(timedelta(seconds=1), timedelta(days=30)),
    )
    warn_command: str | None = _opt(
        None,
        "Shell command run as the warning instead of the default notice; gets the same variables as --command.",
        parse=_parse_optional_str,
        group="action",
    )
    notice_file: Path = _opt(
        Path(os.path.expanduser("~/lamplighter-notice.txt")),
        "File the default warning writes its notice to.",
        parse=_parse_path,
        group="action",
    )
    keep_alive_file: Path = _opt(
        Path(os.path.expanduser("~/.lamplighter/keep-alive")),
        "Touching this file counts as activity; 'lamplighter snooze' writes a keep-until time into it.",
        parse=_parse_path,
        group="policy",
    )

    # -- views (metrics, status page, report) ---------------------------------------------------
    metrics_port: int | None = _opt(
        None,
        "Serve Prometheus metrics at http://METRICS_HOST:PORT/metrics while watching (0: a free port, logged).",
        parse=_parse_optional_int,
        group="views",
        bounds=(0, 65535),
    )
    metrics_host: str = _opt(
        "127.0.0.1",
        "Address the metrics endpoint binds (loopback: only this machine can scrape it).",
        parse=_parse_str,
        group="views",
    )

    # -- the journal --------------------------------------------------------------------------
    journal: Path = _opt(
        default_journal_path,
        "SQLite journal of decisions and actions (default in the user's state dir).",
        parse=_parse_path,
        group="journal",
    )
    heartbeat: Path | None = _opt(
        None,
        "JSON file the agent rewrites with its verdict, for fleet checks (default off; on for SageMaker).",
        parse=_parse_optional_path,
        group="journal",
    )
    heartbeat_interval: timedelta = _opt(
        timedelta(seconds=60),
        "Rewrite the heartbeat at least this often.",
        parse=parse_duration,
        group="journal",
        bounds=(timedelta(seconds=1), _DAY),
    )
    log_level: str = _opt("info", "Log level.", parse=_choice(*LOG_LEVELS), group="journal")

    # -- notebook instances (watch --platform sagemaker-notebook-instance) ------------------------
    notebook_instance: str | None = _opt(
        None,
        "Name of the SageMaker notebook instance to stop; default: ResourceName of the metadata file.",
        parse=_parse_optional_str,
        group="sagemaker",
    )
    notebook_instance_port: int = _opt(
        8443,
        "Port of the notebook instance's own Jupyter server on localhost, used when --url is not given; "
        "its certificate is self-signed and not verified (a --url is verified unless --insecure).",
        parse=_parse_int,
        group="sagemaker",
        bounds=(1, 65535),
    )

    # -- Studio Classic (a JupyterServer app culling its KernelGateway apps) ------------------------
    instance_idle_timeouts: tuple[str, ...] = _opt(
        (),
        "Studio Classic: idle timeouts of KernelGateway apps by instance-type pattern, as "
        "'ml.g*=20m,ml.p*=15m'; an app gets the shortest that matches, else idle_timeout.",
        parse=_parse_list,
        group="sagemaker",
    )
    classic_apps_api: str = _opt(
        "studio",
        "Studio Classic: list and delete KernelGateway apps through 'studio' (the JupyterServer's "
        "sagemaker/api/apps; no IAM permission; an app's age counts from when lamplighter first saw "
        "it) or 'sagemaker' (ListApps/DeleteApp; needs those permissions; counts from CreationTime).",
        parse=_choice("studio", "sagemaker"),
        group="sagemaker",
    )
    classic_stop_server: bool = _opt(
        False,
        "Studio Classic: also delete the (free) JupyterServer app once it is idle; default keep it.",
        parse=parse_bool,
        group="sagemaker",
    )

    # -- on-start (the Lambda function of lamplighter.sagemaker.aws_lambda) ----------------------
    onstart_script: str | None = _opt(
        None,
        "The on-start script's text (Lambda environment variables hold 4 KB in all); or onstart_script_uri.",
        parse=_parse_optional_str,
        group="onstart",
        flag=False,
    )
    onstart_script_uri: str | None = _opt(
        None,
        "s3://bucket/key of the on-start script, which the function may read; or onstart_script.",
        parse=_parse_optional_str,
        group="onstart",
        flag=False,
    )
    onstart_app_types: tuple[str, ...] = _opt(
        ("JupyterLab", "JupyterServer"),
        "App types whose CreateApp runs the on-start script (comma-separated).",
        parse=_parse_list,
        group="onstart",
        flag=False,
    )
    onstart_domains: tuple[str, ...] = _opt(
        (),
        "Domain ids whose apps run the on-start script (comma-separated; empty: all).",
        parse=_parse_list,
        group="onstart",
        flag=False,
    )
    onstart_login_as: str | None = _opt(
        None,
        (
            "User profile to log in to a shared space as (any member may; default: who created the"
            " app, else the space's creator)."
        ),
        parse=_parse_optional_str,
        group="onstart",
        flag=False,
    )
    onstart_ready_timeout: timedelta = _opt(
        timedelta(minutes=10),
        "How long to wait for the app to be ready (capped by the time the invocation has left).",
        parse=parse_duration,
        group="onstart",
        flag=False,
        bounds=(timedelta(0), _DAY),
    )

    # -- fleet check and native guard ----------------------------------------------------------
    native_guard: bool = _opt(
        False,
        "Let SageMaker's own idle shutdown stop the app but never a running job: while lamplighter's work "
        "clock runs, keep native_idle_file fresh; cull idle kernels and terminals (kernel_timeout and "
        "terminal_timeout default to idle_timeout). Use with --action none to leave the stop to SageMaker.",
        parse=parse_bool,
        group="action",
    )
    native_idle_file: Path = _opt(
        Path("/tmp/.sagemaker-last-active-timestamp"),
        "The file jupyter-activity-monitor-extension's GET /api/idle reads as the last activity (UTC, "
        "%Y-%m-%dT%H:%M:%S.%fZ); written by native_guard only.",
        parse=_parse_path,
        group="action",
    )
    fleetcheck_domains: tuple[str, ...] = _opt(
        (),
        "Domain ids the scheduled fleet check covers (comma-separated; empty: every domain of the region).",
        parse=_parse_list,
        group="fleetcheck",
        flag=False,
    )
    fleetcheck_sns_topic: str | None = _opt(
        None,
        "ARN of the SNS topic the scheduled fleet check publishes its summary to (empty: log only).",
        parse=_parse_optional_str,
        group="fleetcheck",
        flag=False,
    )
    fleetcheck_log_group: str = _opt(
        "/aws/sagemaker/studio",
        "CloudWatch log group where SageMaker ships the apps' logs; Code Editor agents' heartbeats are read there.",
        parse=_parse_str,
        group="fleetcheck",
    )
    fleetcheck_login_as: str | None = _opt(
        None,
        "User profile the scheduled fleet check logs in as to read heartbeats in shared spaces.",
        parse=_parse_optional_str,
        group="fleetcheck",
        flag=False,
    )
    # Notebook instances in the fleet status and check (their agents log their heartbeat to CloudWatch).
    fleetcheck_notebook_instance_log_group: str = _opt(
        "/aws/sagemaker/NotebookInstances",
        "CloudWatch log group where SageMaker ships notebook instances' logs; their agents' heartbeats are "
        "read there.",
        parse=_parse_str,
        group="fleetcheck",
    )

    # -- derived ------------------------------------------------------------------------------
    @property
    def effective_startup_grace(self) -> timedelta:
        return self.idle_timeout if self.startup_grace is None else self.startup_grace

    @property
    def effective_probe_interval(self) -> timedelta:
        if self.probe_interval is not None:
            return self.probe_interval
        return _clamp(self.idle_timeout / 10, timedelta(seconds=0.2), timedelta(minutes=1))

    @property
    def effective_cull_every(self) -> timedelta:
        if self.cull_every is not None:
            return self.cull_every
        return _clamp(self.idle_timeout / 10, timedelta(seconds=1), timedelta(minutes=5))

    @property
    def effective_process_sample_interval(self) -> timedelta:
        # Scales with the timeout: two busy samples must fit well inside it, or jobs die unseen.
        if self.process_sample_interval is not None:
            return self.process_sample_interval
        return _clamp(self.idle_timeout / 10, timedelta(seconds=0.1), timedelta(seconds=10))

    @property
    def effective_process_window(self) -> timedelta:
        if self.process_window is not None:
            return self.process_window
        interval = self.effective_process_sample_interval
        return _clamp(self.idle_timeout / 2, 4 * interval, max(timedelta(minutes=10), 4 * interval))

    @property
    def effective_process_scope(self) -> str:
        if self.process_scope == "auto" and self.include_user_processes:
            return "user"
        return self.process_scope

    def redacted(self) -> dict[str, str]:
        """Every setting as text, secrets replaced: for ``status --json`` and the extension."""
        out: dict[str, str] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get("secret") and value:
                out[spec.name] = "***"
            elif isinstance(value, timedelta):
                out[spec.name] = f"{value.total_seconds():g}s"
            else:
                # A --command or --url may still hold something shaped like a credential.
                out[spec.name] = "" if value is None else redact(str(value))
        return out


def option_specs() -> list[Any]:
    """The dataclass fields of :class:`Settings` with their metadata, in declaration order."""
    return list(fields(Settings))


def secret_variables() -> frozenset[str]:
    """Every environment variable a secret setting (token, cookies) is read from."""
    return frozenset(
        name for spec in fields(Settings) if spec.metadata["secret"] for name in _env_names(spec)
    )


def hide_given_secrets(argv: Sequence[str], env: Mapping[str, str], options: Collection[str] = ()) -> None:
    """Register every credential the command line, the environment and the config file carry, before
    anything is parsed: a usage error (a mistyped flag followed by the token) is printed before the
    settings are read, and must not show it either. Best effort: nothing here fails.

    ``options`` are every option string the parser knows: a flag is taken as argparse takes it, itself
    when it is one (``--hub`` is not ``--hub-token``), else the options it is an unambiguous prefix of.
    """
    secret = [spec for spec in fields(Settings) if spec.metadata["secret"]]
    known = set(options) | {_flag_name(spec.name) for spec in fields(Settings)}

    def means(name: str, flag: str) -> bool:
        if name in known:
            return name == flag
        matches = {option for option in known if option.startswith(name)}
        return matches == {flag}

    values: list[str | None] = [env.get(name) for spec in secret for name in _env_names(spec)]
    files = {"token_file": [env.get("LAMPLIGHTER_TOKEN_FILE")], "config": [env.get("LAMPLIGHTER_CONFIG")]}
    for i, arg in enumerate(argv):
        name, eq, inline = arg.partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if "://" in arg:
            values.extend(url_credentials(inline if arg.startswith("--") and eq else arg))
        if not name.startswith("--") or len(name) < 4:
            continue
        if any(means(name, _flag_name(spec.name)) for spec in secret):
            values.append(value)
        for key in files:
            if means(name, _flag_name(key)):
                files[key].append(value)
    # Regular files only: a pipe (--token-file /dev/stdin) read here would be empty for the settings.
    for path in files["token_file"]:
        with contextlib.suppress(OSError, IndexError, UnicodeDecodeError, ValueError):
            if path is not None and _regular_file(path):
                values.append(Path(path).read_text().strip().splitlines()[0].strip())
    configs = [*files["config"], str(_home_config())]
    for path in configs:
        with contextlib.suppress(ConfigError, ValueError):
            if path is None or not _regular_file(path):
                continue
            table = _read_toml(Path(path))
            for spec in secret:
                values.append(table[spec.name] if isinstance(table.get(spec.name), str) else None)
            for text in table.values():
                values.extend(url_credentials(text) if isinstance(text, str) and "://" in text else ())
    for value in filter(None, values):
        hide(value, *(part.partition("=")[2].strip() for part in value.split(";")))


def _home_config() -> Path:
    return Path(os.path.expanduser("~/.config/lamplighter/config.toml"))


def _regular_file(path: str | None) -> bool:
    try:
        return path is not None and Path(path).is_file()
    except (OSError, ValueError):
        return False


def _env_names(spec: Any) -> tuple[str, ...]:
    return spec.metadata.get("env") or (f"LAMPLIGHTER_{spec.name.upper()}",)


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def duration_text(value: timedelta) -> str:
    """``100ms``, ``90s``, ``10m``, ``365d``: the largest unit that states it exactly; parses back."""
    ms = round(value.total_seconds() * 1000)
    if value != timedelta(milliseconds=ms):  # finer than a millisecond: microseconds, exactly
        return f"{value.total_seconds():.6f}".rstrip("0") + "s"
    if ms == 0:
        return "0s"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _format_bound(value: Any) -> str:
    if not isinstance(value, timedelta):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return duration_text(value)


def describe_bounds(spec: Any) -> str | None:
    """``"1s to 365d"``: an option's documented range, or None for options without one."""
    bounds = spec.metadata.get("bounds")
    if bounds is None:
        return None
    return f"{_format_bound(bounds[0])} to {_format_bound(bounds[1])}"


def _parse_value(spec: Any, raw: object, source: str) -> Any:
    parse: Callable[[object], Any] = spec.metadata["parse"]
    shown = "***" if spec.metadata.get("secret") else repr(raw)
    try:
        value = parse(raw)
    except (ValueError, TypeError, OverflowError):
        choices = getattr(parse, "choices", None)
        expected = "one of " + ", ".join(choices) if choices else _EXPECTED.get(parse, "a valid value")
        if spec.metadata.get("bounds") is not None:
            expected += f" between {describe_bounds(spec).replace(' to ', ' and ')}"  # type: ignore[union-attr]
        raise ConfigError(f"{spec.name} ({source}): expected {expected}, got {shown}") from None
    if spec.metadata.get("secret") and isinstance(value, str):
        # From here on masked in every output, wherever it turns up; a cookie string's values too.
        hide(value, *(part.partition("=")[2].strip() for part in value.split(";")))
    bounds = spec.metadata.get("bounds")
    # `not lo <= v <= hi` also rejects NaN, which compares false with everything.
    if bounds is not None and value is not None and not bounds[0] <= value <= bounds[1]:
        limits = describe_bounds(spec).replace(" to ", " and ")  # type: ignore[union-attr]
        raise ConfigError(f"{spec.name} ({source}): must be between {limits}, got {shown}")
    return value


def parse_setting(name: str, raw: object, source: str) -> Any:
    """One setting's value from ``raw``, checked as :func:`load_settings` checks it; ``source`` names
    where it came from (a flag) in the ``ConfigError``. For commands that pass a setting on (into a
    lifecycle script) rather than use it here."""
    return _parse_value(next(spec for spec in fields(Settings) if spec.name == name), raw, source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    # Accept either top-level keys or a [lamplighter] table.
    table = data.get("lamplighter", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [lamplighter] must be a table")
    return {str(k).replace("-", "_"): v for k, v in table.items()}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Build validated settings from defaults < TOML < env < flags; raises ``ConfigError`` with one line.

    ``flags`` maps field names to raw values (strings from argparse, or typed values from Python).
    ``config_path`` defaults to ``LAMPLIGHTER_CONFIG``, then ``~/.config/lamplighter/config.toml`` if present.
    """
    env = os.environ if env is None else env
    flags = dict(flags or {})
    specs = {spec.name: spec for spec in fields(Settings)}
    values: dict[str, Any] = {}

    path = config_path or (Path(env["LAMPLIGHTER_CONFIG"]) if env.get("LAMPLIGHTER_CONFIG") else None)
    if path is None:
        home_config = _home_config()
        path = home_config if home_config.is_file() else None
    if path is not None:
        for key, raw in _read_toml(path).items():
            if key not in specs:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _parse_value(specs[key], raw, f"in {path.name}")

    for name, spec in specs.items():
        # The first name listed wins when several are set (LAMPLIGHTER_* before the AWS sample's names).
        for env_name in _env_names(spec):
            if env_name in env and env[env_name] != "":
                values[name] = _parse_value(spec, env[env_name], env_name)
                break

    for name, raw in flags.items():
        if name not in specs:
            raise ConfigError(f"unknown setting {name!r}")
        if raw is not None:
            values[name] = _parse_value(specs[name], raw, _flag_name(name))

    settings = Settings(**values)
    return _derive(settings, env)


def _clamp(value: timedelta, low: timedelta, high: timedelta) -> timedelta:
    return max(low, min(value, high))


def _check_process_timing(settings: Settings) -> None:
    """A work signal must be able to see a job well inside the idle timeout, or it cannot protect it."""
    interval = settings.effective_process_sample_interval
    window = settings.effective_process_window
    if interval <= timedelta(0):
        raise ConfigError("process_sample_interval: must be more than 0 seconds")
    if window < 2 * interval:
        raise ConfigError(
            f"process_window: {window.total_seconds():g}s holds fewer than two samples of "
            f"process_sample_interval {interval.total_seconds():g}s"
        )
    if settings.process_signal and 2 * interval >= settings.idle_timeout:
        raise ConfigError(
            f"process_sample_interval: two samples ({2 * interval.total_seconds():g}s) must fit inside "
            f"idle_timeout ({settings.idle_timeout.total_seconds():g}s), or a job dies before it is seen; "
            "shorten it or leave it unset"
        )
    if settings.probe_interval is not None and settings.probe_interval <= timedelta(0):
        raise ConfigError("probe_interval: must be more than 0 seconds")


def _derive(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Fill derived values and check combinations; the only place defaults depend on other settings."""
    changes: dict[str, Any] = {}
    if settings.url is None and any(env.get(k) for k in ("JL_HOSTNAME", "JL_PORT", "JL_BASE_URL")):
        host = env.get("JL_HOSTNAME") or "127.0.0.1"
        # 0.0.0.0 is where the sample's server listens, not an address to connect to.
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        port = env.get("JL_PORT") or "8888"
        if not port.isdigit():
            raise ConfigError(f"url (JL_PORT): expected a port number, got {port!r}")
        base = "/".join(("", *filter(None, (env.get("JL_BASE_URL") or "").split("/")), ""))
        changes["url"] = f"http://{host}:{port}{base}"
    url = changes.get("url", settings.url)
    if url:
        # A token pasted into the URL must not live on in the URL (it is logged and journaled).
        base, url_token = split_server_url(url)
        changes["url"] = base
        if url_token and settings.token is None:
            changes["token"] = url_token
    if settings.token is None and "token" not in changes and settings.token_file is not None:
        try:
            changes["token"] = settings.token_file.read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ConfigError(f"token_file: cannot read a token from {settings.token_file}") from None
    if settings.platform in ("sagemaker", "sagemaker-notebook-instance") and settings.heartbeat is None:
        changes["heartbeat"] = Path(os.path.expanduser("~/.lamplighter/heartbeat.json"))
    if settings.action == "command" and not settings.command:
        raise ConfigError("command: --action command needs --command 'shell command'")
    if settings.native_guard:
        # SageMaker's docs: open kernels and terminals hold off its native idle shutdown; cull idle ones.
        if settings.kernel_timeout is None:
            changes["kernel_timeout"] = settings.idle_timeout
        if settings.terminal_timeout is None:
            changes["terminal_timeout"] = settings.idle_timeout
    _check_process_timing(settings)
    final = replace(settings, **changes) if changes else settings
    # A token from a file or lifted from the URL is masked like one given directly (_parse_value).
    hide(final.token)
    return final
