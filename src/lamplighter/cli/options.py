"""The command-line options that are not settings, each declared once: its spelling, type and help.

Settings (``--idle-timeout``, ``--region``, ``--log-level`` ...) are generated from
:mod:`lamplighter.settings` by :func:`~lamplighter.cli.common.add_settings_options`. What is here
belongs to one invocation, not to a standing configuration: whom to log in to (``--domain``,
``--space``), a run's time budgets (``--timeout``), the output form (``--json``). As settings they
would be read from the environment and the config file too, so a ``LAMPLIGHTER_TIMEOUT`` meant for
one command would silently apply to every ``run``. Several commands share them, hence one table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lamplighter.errors import ConfigError
from lamplighter.settings import APP_TYPES, DURATION_EXPECTED, app_type_name, parse_duration

__all__ = ["OPTIONS", "Option", "add_option", "check_required", "duration_flag", "parse_duration_flag"]


def duration_flag(flag: str) -> Callable[[str], float]:
    """An argparse ``type`` for a duration flag: seconds, from the one duration parser.

    It raises :class:`ConfigError`, which argparse lets through, so a bad value is one line naming the
    flag (exit 2), as a bad setting is.
    """

    def seconds(text: str) -> float:
        return parse_duration_flag(flag, text).total_seconds()

    return seconds


def parse_duration_flag(flag: str, text: str) -> timedelta:
    """``text`` as a duration, or a one-line :class:`ConfigError` naming ``flag``."""
    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError(f"{flag}: expected {DURATION_EXPECTED}, got {text!r}") from None


@dataclass(frozen=True)
class Option:
    """One option: its flags, its help, the argparse keywords, and former spellings still accepted."""

    flags: tuple[str, ...]
    help: str
    argparse: Mapping[str, Any] = field(default_factory=dict)
    #: Older spellings users may have in scripts: accepted, not shown in ``--help``.
    old: tuple[str, ...] = ()


def _budget(flag: str, what: str) -> Option:
    return Option((flag,), what, {"type": duration_flag(flag), "metavar": "DURATION"})


OPTIONS: dict[str, Option] = {
    "json": Option(("--json",), "Print JSON, not text.", {"action": "store_true"}),
    "domain": Option(
        ("--domain",),
        "The SageMaker Studio domain id (d-...).",
        {"metavar": "ID"},
        old=("--sagemaker-domain",),
    ),
    "space": Option(("--space",), "The app's space (Studio).", {"metavar": "NAME"}),
    "user_profile": Option(
        ("--user-profile",), "The app's user profile (Studio Classic).", {"metavar": "NAME"}
    ),
    "notebook_instance": Option(
        ("--notebook-instance",),
        "A SageMaker notebook instance (instead of a Studio domain).",
        {"metavar": "NAME"},
    ),
    "login_as": Option(
        ("--login-as",),
        "User profile to log in to a shared space as (a member; a private space is always its owner's).",
        {"metavar": "USER"},
    ),
    "app_type": Option(
        ("--app-type",),
        "The kind of app; SageMaker's names JupyterLab, JupyterServer, CodeEditor are accepted too.",
        {"type": app_type_name, "choices": APP_TYPES},
        old=("--sagemaker-app-type",),
    ),
    "script": Option(("--script",), "A local bash script to run.", {"metavar": "FILE"}),
    "output": Option(("-o", "--output"), "Write it here, not to stdout.", {"metavar": "PATH"}),
    "timeout": _budget("--timeout", "Time budget of the whole command [none]."),
    "cell_timeout": Option(
        ("--cell-timeout", "--execution-timeout"),
        "Per-cell budget from when the cell starts: interrupt the kernel, then fail [none].",
        {"type": duration_flag("--cell-timeout"), "metavar": "DURATION"},
    ),
    "start_timeout": _budget("--start-timeout", "Budget for the kernel to start and answer."),
    "ready_timeout": _budget("--ready-timeout", "How long to wait for the app to be ready."),
    # run notebook's parameters and papermill's spellings of its flags, so a papermill command line
    # works after "lamplighter run notebook" unchanged.
    "parameters": Option(
        ("-p", "--parameters"),
        "A parameter; VALUE becomes a bool, None, int or float (nan, inf) when it reads as one.",
        {"nargs": 2, "action": "append", "default": [], "metavar": ("NAME", "VALUE")},
        old=("--parameter",),
    ),
    "parameters_raw": Option(
        ("-r", "--parameters_raw"),
        "A parameter kept as a string (wins over -p for the same name, as in papermill).",
        {"nargs": 2, "action": "append", "default": [], "metavar": ("NAME", "VALUE")},
        old=("--parameter-raw",),
    ),
    "parameters_yaml": Option(
        ("-y", "--parameters_yaml"),
        "Parameters as a YAML mapping; repeatable, merged in order.",
        {"action": "append", "default": [], "metavar": "YAML"},
        old=("--parameters-yaml",),
    ),
    "parameters_file": Option(
        ("-f", "--parameters_file"),
        "Parameters from a YAML file; repeatable, merged in order.",
        {"action": "append", "default": [], "metavar": "FILE"},
        old=("--parameters-file",),
    ),
    "parameters_base64": Option(
        ("-b", "--parameters_base64"),
        "Parameters as base64-encoded YAML; repeatable.",
        {"action": "append", "default": [], "metavar": "B64"},
    ),
    "kernel": Option(
        ("-k", "--kernel"),
        "Kernelspec [default: the notebook's, else the server's].",
        {"metavar": "NAME"},
    ),
    "report_mode": Option(
        ("--report-mode",),
        "Hide the injected parameters cell's source (papermill's report mode).",
        {"action": "store_true"},
    ),
    "prepare_only": Option(
        ("--prepare-only",),
        "Inject the parameters and save the notebook; run nothing.",
        {"action": "store_true"},
    ),
    "stdin": Option(
        ("--stdin",),
        "Answer the cells' input() and getpass() from this terminal [default: they raise "
        "StdinNotImplementedError, as under nbclient].",
        {"action": "store_true"},
    ),
    "stdin_file": Option(
        ("--stdin-file",),
        "Answer the cells' input() and getpass() from this file, one answer a line, in order.",
        {"metavar": "FILE"},
    ),
    "log_output": Option(("--log-output",), "Stream cell output to this terminal.", {"action": "store_true"}),
    # Studio Classic: the kernel runs on a KernelGateway app of this instance type.
    "instance_type": Option(
        ("--instance-type",),
        "Studio Classic: start the kernel on a KernelGateway app of this instance type (ml.t3.medium); "
        "the app is deleted after the run unless --keep-app.",
        {"metavar": "TYPE"},
    ),
    "keep_app": Option(
        ("--keep-app",),
        "Studio Classic: keep the kernel's KernelGateway app after the run.",
        {"action": "store_true"},
    ),
    # run notebook: more of papermill's flags (paths as parameters, the engine, when to save).
    "inject_paths": Option(
        ("--inject-paths",),
        "Add the input and output paths as the parameters PAPERMILL_INPUT_PATH and PAPERMILL_OUTPUT_PATH.",
        {"action": "store_true"},
    ),
    "inject_input_path": Option(
        ("--inject-input-path",),
        "Add the input path as the parameter PAPERMILL_INPUT_PATH.",
        {"action": "store_true"},
    ),
    "inject_output_path": Option(
        ("--inject-output-path",),
        "Add the output path as the parameter PAPERMILL_OUTPUT_PATH.",
        {"action": "store_true"},
    ),
    "engine": Option(
        ("--engine",),
        "papermill's execution engine: only its default, nbclient, which this runner reproduces.",
        {"metavar": "NAME"},
    ),
    "autosave_cell_every": Option(
        ("--autosave-cell-every",),
        "Save every SECONDS while one cell runs long; 0: only between cells [30].",
        {"type": int, "default": 30, "metavar": "SECONDS"},
    ),
    "history": Option(
        ("--history",),
        "IPython kernels: keep the run's input history in memory, as nbclient and papermill do "
        "[memory]; file: in the kernel's history.sqlite on the server.",
        {"choices": ("memory", "file"), "default": "memory"},
    ),
    "request_save_on_cell_execute": Option(
        ("--request-save-on-cell-execute",),
        "Save after cells finish (coalesced: at most about once a second) [on]; "
        "--no-request-save-on-cell-execute: only at the start and the end (and --autosave-cell-every).",
        {"action": argparse.BooleanOptionalAction, "default": True},
    ),
    # run notebook: papermill's language override, stream files and notebook help.
    "language": Option(
        ("-l", "--language"),
        "Write the parameters in this language's syntax (papermill's translators: python, R, julia, "
        "scala, matlab, bash...) [default: the kernelspec's language on the server, else the notebook's].",
        {"metavar": "LANG"},
    ),
    "stdout_file": Option(
        ("--stdout-file",),
        "Write the cells' stdout here as it arrives ('-': this stdout); with or without --log-output.",
        {"metavar": "FILE"},
    ),
    "stderr_file": Option(
        ("--stderr-file",),
        "Write the cells' stderr here as it arrives ('-': this stdout); with or without --log-output.",
        {"metavar": "FILE"},
    ),
    "help_notebook": Option(
        ("--help-notebook",),
        "Print the parameters the notebook's 'parameters' cell declares (name, type, default, help) and "
        "exit; no kernel is started (exit 1 when no cell is tagged 'parameters', as in papermill).",
        {"action": "store_true"},
    ),
}


def add_option(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    group: argparse._ArgumentGroup | None = None,
    **overrides: Any,
) -> argparse.Action:
    """Add the option ``name`` from :data:`OPTIONS` (to ``group`` of ``parser`` if given);
    ``overrides`` (help, default, required) are the command's own."""
    option = OPTIONS[name]
    keywords = {"help": option.help, **option.argparse, **overrides}
    if keywords.pop("required", False):
        # argparse would reject an old spelling as "--domain is required": checked after parsing instead.
        keywords["help"] += " (required)"
        required = parser.get_default("required_options") or ()
        parser.set_defaults(required_options=(*required, (option.flags[-1], name)))
    target = group or parser
    action = target.add_argument(*option.flags, dest=name, **keywords)
    for old in option.old:
        hidden = {k: v for k, v in keywords.items() if k != "help"}
        target.add_argument(old, dest=name, help=argparse.SUPPRESS, **hidden)
    return action


def check_required(args: argparse.Namespace) -> None:
    """Raise a one-line :class:`ConfigError` for a required option given in no spelling."""
    for flag, name in getattr(args, "required_options", ()):
        if getattr(args, name, None) is None:
            raise ConfigError(f"{flag} is required")
