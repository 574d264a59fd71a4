"""The SageMaker Studio commands: ``lcc render|install``, ``on-start`` and ``fleet status|check``.

Only parsing and printing live here; the work is in :mod:`lamplighter.sagemaker.lcc`,
:mod:`lamplighter.sagemaker.onstart` and :mod:`lamplighter.sagemaker.fleet`. The AWS options
(``--region``, ``--sagemaker-endpoint-url``, ``--insecure``) are the settings of the same names, so they
also come from ``LAMPLIGHTER_REGION``/``AWS_REGION``, ``LAMPLIGHTER_SAGEMAKER_ENDPOINT_URL`` and the
config file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lamplighter.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    add_settings_options,
    console,
    settings_from_args,
    start_logging,
)
from lamplighter.cli.options import add_option
from lamplighter.errors import ConfigError
from lamplighter.settings import SAGEMAKER_APP_TYPES, Settings, parse_setting

__all__ = ["add_sagemaker_parsers"]

_AWS_OPTIONS = ("region", "sagemaker_endpoint_url", "verify_tls", "log_level")
_FLEET_LOG_GROUPS = ("fleetcheck_log_group", "fleetcheck_notebook_instance_log_group")
# The agent settings a rendered script carries: the command's defaults are the settings' own, and the
# values come from the flags only (the machine that renders is not the app that runs the script).
_SCRIPT_SETTINGS = {"idle_timeout": "3600s", "ignore_connections": "true", "skip_terminals": "false"}

_LCC_EPILOG = """\
The script installs lamplighter in its own virtual environment and keeps `lamplighter watch --platform
sagemaker` running (restarted with backoff if it exits; no cron). It takes the AWS auto-stop-idle
sample's variables: IDLE_TIME_IN_SECONDS, IGNORE_CONNECTIONS, SKIP_TERMINALS, JL_HOSTNAME, JL_PORT,
JL_BASE_URL. The app's execution role needs sagemaker:DeleteApp and sagemaker:DescribeApp.

With --notebook-instance NAME (instead of --app-type and --domain) the script is for that notebook
instance: it keeps `lamplighter watch --platform sagemaker-notebook-instance` running, whose role needs
sagemaker:StopNotebookInstance and sagemaker:DescribeNotebookInstance; `install` creates or updates the
notebook-instance lifecycle configuration and attaches it, which SageMaker allows only while the
instance is Stopped."""

_BUNDLE_EPILOG = """\
Builds lamplighter's wheel from the source checkout, downloads binary wheels of it and its dependencies
for CPython 3.10, 3.11 and 3.12 on manylinux x86_64 (pip download --only-binary=:all:), and writes
manifest.json (which wheels each Python takes, with SHA-256). Then pass the same place to
`lcc render|install --wheelhouse`: the script installs with pip --no-index from it. Uploading needs
s3:PutObject; the apps' execution role needs s3:GetObject and s3:ListBucket on the prefix."""

_ONSTART_EPILOG = """\
Waits (up to --ready-timeout) until the app is InService and its Jupyter API answers, logs in with
CreatePresignedDomainUrl, runs the script in a terminal as the app's user, and records the exit status
and the end of the output in the journal. Needs sagemaker:DescribeApp, sagemaker:CreatePresignedDomainUrl
(which grants login and code execution as the user) and, for a space, sagemaker:DescribeSpace.

exit status: 0 the script exited 0; 1 it exited non-zero, the app failed, or an AWS call was refused;
2 bad arguments or settings; 3 the login or the Jupyter API failed; 4 a timeout ran out."""

_FLEET_EPILOG = """\
Agent states: running (heartbeat younger than 3 of the intervals the agent recorded), stale (older: the
agent stopped), no agent (no heartbeat), unknown (it could not be read), n/a (not a Jupyter app, or not
InService). Reading a heartbeat logs in with a presigned URL and never counts as activity. Needs
sagemaker:ListApps, sagemaker:CreatePresignedDomainUrl and sagemaker:DescribeSpace; Code Editor agents are
read from CloudWatch Logs (logs:FilterLogEvents on --fleetcheck-log-group); --all-domains needs
sagemaker:ListDomains.

With --notebook-instances, every notebook instance of the region too (after the apps; in --json, rows
with "kind": "notebook instance"), listed with sagemaker:ListNotebookInstances; their agents' heartbeats
are read from their CloudWatch log (logs:FilterLogEvents on --fleetcheck-notebook-instance-log-group)."""


_FLEET_CHECK_EPILOG = """\
The same check the SAM template's scheduled function runs (lamplighter.sagemaker.fleet_lambda.handler),
printed instead of published. Domains: LAMPLIGHTER_FLEETCHECK_DOMAINS, else every domain of the region.
Notebook instances: every one of the region (sagemaker:ListNotebookInstances), whether its configuration
runs lamplighter (sagemaker:DescribeNotebookInstanceLifecycleConfig), and an InService one's agent
(logs:FilterLogEvents on --fleetcheck-notebook-instance-log-group).
exit status: 0 no problem found; 1 problems found, or an AWS call failed; 2 bad settings."""


def add_sagemaker_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lcc``, ``on-start`` and ``fleet`` to the ``lamplighter`` command."""
    lcc = subparsers.add_parser("lcc", help="SageMaker Studio lifecycle configurations that run the agent.")
    lcc_commands = lcc.add_subparsers(title="lcc commands", metavar="COMMAND")

    render = add_command(
        lcc_commands,
        "render",
        "Print the on-start script that installs and supervises `lamplighter watch`.",
        epilog=_LCC_EPILOG,
    )
    _add_render_options(render)
    add_option(render, "output", type=Path, help="Write the script here, not to stdout.")
    render.set_defaults(handler=_lcc_render)

    bundle = add_command(
        lcc_commands,
        "bundle",
        "Build the wheelhouse the script installs lamplighter from (no PyPI), for CPython 3.10 to 3.12.",
        epilog=_BUNDLE_EPILOG,
    )
    bundle.add_argument(
        "--to",
        required=True,
        metavar="S3_OR_DIR",
        help="An s3://bucket/prefix (uploaded with boto3) or a folder.",
    )
    bundle.add_argument(
        "--source", type=Path, metavar="DIR", help="The lamplighter source checkout [the one this runs from]."
    )
    bundle.add_argument(
        "--python",
        dest="pythons",
        default="3.10,3.11,3.12",
        metavar="VERSIONS",
        help="CPython versions to fetch wheels for [3.10,3.11,3.12].",
    )
    bundle.add_argument("--index-url", default="", metavar="URL", help="Fetch from this mirror, not PyPI.")
    add_settings_options(bundle, names=_AWS_OPTIONS)
    bundle.set_defaults(handler=_lcc_bundle)

    install = add_command(
        lcc_commands,
        "install",
        "Create the lifecycle configuration and make it the default of a domain or user profile.",
        epilog=_LCC_EPILOG,
    )
    add_option(install, "domain", help="The SageMaker Studio domain id (d-...); or --notebook-instance.")
    add_option(
        install, "user_profile", help="Set the default for this user profile only, not the whole domain."
    )
    install.add_argument("--name", metavar="NAME", help="Configuration name [lamplighter-<app type>-<hash>].")
    add_option(install, "script", type=Path, help="Install this script instead of rendering one.")
    install.add_argument(
        "--dry-run", action="store_true", help="Read the current settings, print the write calls, make none."
    )
    add_option(install, "json")
    _add_render_options(install)
    add_settings_options(install, names=_AWS_OPTIONS)
    install.set_defaults(handler=_lcc_install)

    onstart = add_command(
        subparsers,
        "on-start",
        "Wait for a SageMaker Studio app, run a script in it as its user, record the result.",
        epilog=_ONSTART_EPILOG,
    )
    add_option(onstart, "domain", required=True)
    add_option(onstart, "space")
    add_option(
        onstart,
        "user_profile",
        help="The app's user profile (Studio Classic); with --space, the user to log in as (shared spaces).",
    )
    add_option(onstart, "app_type", default="jupyter", help="The kind of app [jupyter: JupyterLab].")
    onstart.add_argument("--app-name", default="default", metavar="NAME", help="[default]")
    add_option(onstart, "script", type=Path, required=True, help="The script to run (bash).")
    add_option(onstart, "ready_timeout", default="10m", help="How long to wait for the app [10m].")
    add_option(onstart, "timeout", help="Time budget of the script itself [none].")
    add_option(onstart, "json", help="Print the result as JSON, not the output as it runs.")
    add_settings_options(onstart, names=(*_AWS_OPTIONS, "journal"))
    onstart.set_defaults(handler=_on_start)

    fleet = subparsers.add_parser("fleet", help="Check many apps at once.")
    fleet_commands = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")
    status = add_command(
        fleet_commands,
        "status",
        "Every app of a SageMaker Studio domain, whether lamplighter watches it, and its idle time.",
        epilog=_FLEET_EPILOG,
    )
    add_option(status, "domain")
    status.add_argument(
        "--all-domains",
        action="store_true",
        help="Every domain of the region (ListDomains), not one.",
    )
    status.add_argument(
        "--notebook-instances",
        action="store_true",
        help="Also the region's notebook instances (alone, or with a domain or --all-domains).",
    )
    add_option(status, "json")
    status.add_argument("--all", action="store_true", help="Include Deleted apps.")
    add_option(status, "login_as")
    status.add_argument("--concurrency", type=int, default=4, metavar="N", help="Apps read at once [4].")
    add_settings_options(status, names=(*_AWS_OPTIONS, "heartbeat_interval", *_FLEET_LOG_GROUPS))
    status.set_defaults(handler=_fleet_status)

    check = add_command(
        fleet_commands,
        "check",
        "What the scheduled fleet check reports: every domain, user profile, space, app and notebook "
        "instance, and what is not kept from running idle.",
        epilog=_FLEET_CHECK_EPILOG,
    )
    add_option(check, "json")
    add_settings_options(check, names=(*_AWS_OPTIONS, "heartbeat_interval", *_FLEET_LOG_GROUPS))
    check.set_defaults(handler=_fleet_check)


def _add_render_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("script options")
    add_option(
        parser,
        "app_type",
        group=group,
        help="The app type it runs in: jupyter or code-editor (required, unless --notebook-instance).",
    )
    add_option(
        parser,
        "notebook_instance",
        group=group,
        help="A script for this SageMaker notebook instance instead (notebook-instance lifecycle configuration).",
    )
    # IDLE_TIME_IN_SECONDS, IGNORE_CONNECTIONS and SKIP_TERMINALS of the script: the agent's settings.
    add_settings_options(parser, defaults=_SCRIPT_SETTINGS)
    parser.add_argument("--idle-time", dest="idle_timeout", help=argparse.SUPPRESS)  # the old spelling
    group.add_argument(
        "--package", metavar="SPEC", help="What pip installs [lamplighter[sagemaker]==VERSION]."
    )
    group.add_argument(
        "--wheelhouse",
        default="",
        metavar="S3_OR_DIR",
        help="Install from this s3:// prefix or folder made by `lcc bundle` (pip --no-index).",
    )
    group.add_argument(
        "--index-url",
        default="",
        metavar="URL",
        help="Or install from this package index (a private mirror that serves lamplighter).",
    )
    group.add_argument(
        "--install-budget",
        type=int,
        default=120,
        metavar="SECONDS",
        help="Past this the install carries on in the background and the app starts [120].",
    )
    group.add_argument(
        "--log-file",
        metavar="PATH",
        help="Where the agent logs [/var/log/apps/app_container.log; on a notebook instance "
        "/var/log/jupyter.log; both are delivered to CloudWatch].",
    )


def _render(args: argparse.Namespace) -> str:
    from lamplighter.sagemaker.lcc import NOTEBOOK_INSTANCE, RenderOptions, render_on_start

    if args.notebook_instance:
        app_type, default_log = NOTEBOOK_INSTANCE, "/var/log/jupyter.log"
    elif args.app_type:
        app_type, default_log = SAGEMAKER_APP_TYPES[args.app_type], "/var/log/apps/app_container.log"
    else:
        raise ConfigError("--app-type is required (or --notebook-instance NAME)")
    options: dict[str, Any] = {
        "app_type": app_type,
        "notebook_instance": args.notebook_instance or "",
        "idle_time_s": int(
            parse_setting("idle_timeout", args.idle_timeout, "--idle-timeout").total_seconds()
        ),
        "ignore_connections": parse_setting(
            "ignore_connections", args.ignore_connections, "--count-connections"
        ),
        "skip_terminals": parse_setting("skip_terminals", args.skip_terminals, "--skip-terminals"),
        "wheelhouse": args.wheelhouse,
        "index_url": args.index_url,
        "install_budget_s": args.install_budget,
        "log_file": args.log_file or default_log,
    }
    if args.package:
        options["package"] = args.package
    return render_on_start(RenderOptions(**options))


def _read_script(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"--script {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--script {path}: not UTF-8 text") from None


def _setup(args: argparse.Namespace) -> Settings:
    # Only the settings flags these commands add: their own options (--app-type, --skip-terminals,
    # --dry-run...) share names with settings but mean something else here.
    ours = {*_AWS_OPTIONS, "journal", "heartbeat_interval", "config", *_FLEET_LOG_GROUPS}
    settings = settings_from_args(argparse.Namespace(**{k: v for k, v in vars(args).items() if k in ours}))
    start_logging(args, settings.log_level)
    return settings


# -- lcc ----------------------------------------------------------------------------------------


def _lcc_render(args: argparse.Namespace) -> int:
    script = _render(args)
    if args.output:
        try:
            args.output.write_text(script)
            args.output.chmod(0o755)
        except OSError as exc:
            raise ConfigError(f"--output {args.output}: cannot write ({exc.strerror})") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(script)
    return EXIT_OK


def _lcc_bundle(args: argparse.Namespace) -> int:
    import tempfile

    from lamplighter.sagemaker.wheelhouse import build_wheelhouse, upload_wheelhouse

    _setup(args)
    pythons = [p.strip() for p in args.pythons.split(",") if p.strip()]
    if not pythons or any(not p.startswith("3.") or not p[2:].isdigit() for p in pythons):
        raise ConfigError(f"--python: expected versions like 3.10,3.11,3.12, got {args.pythons!r}")
    pip_args = ["--index-url", args.index_url] if args.index_url else []
    with tempfile.TemporaryDirectory(prefix="lamplighter-wheelhouse-") as scratch:
        folder = Path(scratch) if args.to.startswith("s3://") else Path(args.to)
        manifest = build_wheelhouse(folder, source=args.source, pythons=pythons, pip_args=pip_args)
        if args.to.startswith("s3://"):
            # boto3's own S3 client: AWS_ENDPOINT_URL_S3 reaches an S3 VPC endpoint (or a test's).
            upload_wheelhouse(folder, args.to)
    counts = ", ".join(f"{python}: {len(names)} wheels" for python, names in manifest["pythons"].items())
    print(f"wheelhouse for lamplighter {manifest['lamplighter']} at {args.to} ({counts})")
    print(f"use it: lamplighter lcc install --wheelhouse {args.to} ...", file=sys.stderr)
    return EXIT_OK


def _lcc_install(args: argparse.Namespace) -> int:
    from lamplighter.sagemaker.lcc import install_lcc

    settings = _setup(args)
    script = _read_script(args.script) if args.script else _render(args)
    if args.notebook_instance:
        return _lcc_install_notebook_instance(args, settings, script)
    if not args.domain:
        raise ConfigError("--domain is required (or --notebook-instance NAME)")
    result = asyncio.run(
        install_lcc(
            script,
            domain_id=args.domain,
            app_type=SAGEMAKER_APP_TYPES[args.app_type],
            user_profile=args.user_profile,
            name=args.name,
            region=settings.region,
            endpoint_url=settings.sagemaker_endpoint_url,
            dry_run=args.dry_run,
        )
    )
    if args.json:
        print(
            json.dumps(
                {
                    "lcc_name": result.lcc_name,
                    "lcc_arn": result.lcc_arn,
                    "reused": result.reused,
                    "target": result.target,
                    "dry_run": result.dry_run,
                    "notes": list(result.notes),
                    "calls": [{"operation": c.operation, "params": c.display()} for c in result.calls],
                },
                indent=2,
            )
        )
        return EXIT_OK
    verb = "would call" if result.dry_run else "called"
    for planned in result.calls:
        print(f"{verb} {planned.operation} {json.dumps(planned.display(), indent=2)}")
    if result.reused:
        print(f"reusing the identical lifecycle configuration {result.lcc_name}")
    for note in result.notes:
        print(f"note: {note}")
    done = "would be" if result.dry_run else "is now"
    print(
        f"{result.lcc_arn} {done} the default {SAGEMAKER_APP_TYPES[args.app_type]} lifecycle configuration of {result.target}"
    )
    return EXIT_OK


def _lcc_install_notebook_instance(args: argparse.Namespace, settings: Settings, script: str) -> int:
    from lamplighter.sagemaker.notebook_instance import install_notebook_instance_lcc

    if args.domain or args.user_profile:
        raise ConfigError("--notebook-instance: a notebook instance has no --domain or --user-profile")
    result = asyncio.run(
        install_notebook_instance_lcc(
            script,
            instance=args.notebook_instance,
            name=args.name,
            region=settings.region,
            endpoint_url=settings.sagemaker_endpoint_url,
            dry_run=args.dry_run,
        )
    )
    calls = [{"operation": c.operation, "params": c.display()} for c in result.calls]
    if args.json:
        shown = {"lcc_name": result.lcc_name, "lcc_arn": result.lcc_arn, "notebook_instance": result.instance}
        print(
            json.dumps(
                {**shown, "dry_run": result.dry_run, "notes": list(result.notes), "calls": calls}, indent=2
            )
        )
        return EXIT_OK
    verb = "would call" if result.dry_run else "called"
    for planned in calls:
        print(f"{verb} {planned['operation']} {json.dumps(planned['params'], indent=2)}")
    for note in result.notes:
        print(f"note: {note}")
    done = "would be" if result.dry_run else "is now"
    print(f"{result.lcc_name} {done} the lifecycle configuration of notebook instance {result.instance}")
    return EXIT_OK


# -- on-start -----------------------------------------------------------------------------------


def _on_start(args: argparse.Namespace) -> int:
    from lamplighter.journal import Journal
    from lamplighter.sagemaker.identity import AppIdentity
    from lamplighter.sagemaker.onstart import record_on_start, run_on_start

    settings = _setup(args)
    if not (args.space or args.user_profile):
        raise ConfigError("on-start: name the app's --space (or --user-profile for Studio Classic)")
    app = AppIdentity(
        domain_id=args.domain,
        app_type=SAGEMAKER_APP_TYPES[args.app_type],
        app_name=args.app_name,
        space_name=args.space,
        user_profile_name=None if args.space else args.user_profile,
        region=settings.region,
    )
    script = _read_script(args.script)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = asyncio.run(
        run_on_start(
            app,
            script,
            endpoint_url=settings.sagemaker_endpoint_url,
            verify_tls=settings.verify_tls,
            login_as=args.user_profile if args.space else None,
            ready_timeout_s=args.ready_timeout,
            run_timeout_s=args.timeout,
            on_output=None if args.json else stream,
        )
    )
    with Journal(settings.journal) as journal:
        record_on_start(journal, result)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"lamplighter: {result.summary}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


# -- fleet --------------------------------------------------------------------------------------


def _fleet_status(args: argparse.Namespace) -> int:
    from lamplighter.sagemaker.fleet import fleet_status
    from lamplighter.sagemaker.fleet_lambda import aws_client
    from lamplighter.sagemaker.fleet_notebooks import notebook_instance_status

    settings = _setup(args)
    if (args.domain and args.all_domains) or not (args.domain or args.all_domains or args.notebook_instances):
        raise ConfigError(
            "fleet status: name one --sagemaker-domain, or --all-domains, or --notebook-instances"
        )
    now = datetime.now(timezone.utc)

    async def every_domain() -> tuple[list[Any], list[Any] | None]:
        from lamplighter.sagemaker.client import sagemaker_client
        from lamplighter.sagemaker.fleet_check import list_domain_ids

        client = sagemaker_client(region=settings.region, endpoint_url=settings.sagemaker_endpoint_url)
        domains = [args.domain] if args.domain else await list_domain_ids(client) if args.all_domains else []
        logs = aws_client("logs", region=settings.region)
        entries: list[Any] = []
        for domain_id in domains:
            entries += await fleet_status(
                domain_id,
                now=now,
                region=settings.region,
                client=client,
                verify_tls=settings.verify_tls,
                heartbeat_interval=settings.heartbeat_interval,
                login_as=args.login_as,
                include_deleted=args.all,
                concurrency=args.concurrency,
                logs_client=logs,
                log_group=settings.fleetcheck_log_group,
            )
        if not args.notebook_instances:
            return entries, None
        instances = await notebook_instance_status(
            client,
            now=now,
            logs_client=logs,
            log_group=settings.fleetcheck_notebook_instance_log_group,
            heartbeat_interval=settings.heartbeat_interval,
            concurrency=args.concurrency,
        )
        return entries, instances

    entries, instances = asyncio.run(every_domain())
    if args.json:
        rows = [entry.to_json(now) for entry in [*entries, *(instances or [])]]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if args.domain or args.all_domains:
        _print_fleet(entries, now)
    if instances is not None:
        _print_notebook_instances(instances, now)
    return EXIT_OK


def _fleet_check(args: argparse.Namespace) -> int:
    from lamplighter.sagemaker.fleet_lambda import run_fleet_check

    settings = _setup(args)
    report = asyncio.run(run_fleet_check(settings, now=datetime.now(timezone.utc)))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
    return EXIT_FAILED if report.problems() else EXIT_OK


def _print_fleet(entries: list[Any], now: datetime) -> None:
    _print_agents(
        f"{len(entries)} apps",
        ("owner", "app", "status"),
        [
            (
                ("space " if e.app.identity.space_name else "user ") + e.app.identity.owner,
                f"{e.app.identity.app_type}/{e.app.identity.app_name}",
                e.app.status,
            )
            for e in entries
        ],
        entries,
        now,
    )


def _print_notebook_instances(instances: list[Any], now: datetime) -> None:
    _print_agents(
        f"{len(instances)} notebook instances",
        ("instance", "status", "lifecycle config"),
        [(i.name, i.status, i.lifecycle_config or "") for i in instances],
        instances,
        now,
    )


def _print_agents(
    title: str, columns: tuple[str, ...], cells: list[tuple[str, ...]], entries: list[Any], now: datetime
) -> None:
    """One table: each row's own ``cells``, then what its agent's heartbeat says."""
    from rich.table import Table

    from lamplighter.model import format_duration, format_time

    table = Table(title=title, title_justify="left")
    for column in (*columns, "agent", "verdict", "idle for", "stop at", "detail"):
        table.add_column(column, overflow="fold")
    for own, entry in zip(cells, entries, strict=True):
        beat = entry.heartbeat
        idle = entry.idle_for(now)
        table.add_row(
            *own,
            entry.agent.value,
            beat.verdict if beat else "",
            format_duration(idle) if idle is not None else "",
            format_time(beat.stop_at) if beat and beat.stop_at else "",
            entry.detail,
        )
    out = console()
    if not out.is_terminal:  # piped: no terminal width to fit, keep rows on one line each
        out = console(width=200)
    out.print(table)
