"""What every command shares: exit statuses, settings flags generated from the declarations, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from lamplighter.errors import (
    AuthRejected,
    CellFailed,
    ConfigError,
    ConnectFailed,
    KernelDied,
    LamplighterError,
    RemoteError,
    RemoteTimeout,
)
from lamplighter.redaction import RedactingFilter, redact
from lamplighter.remote.connection import Connection, connection_from_settings
from lamplighter.settings import Settings, describe_bounds, load_settings, option_specs

__all__ = [
    "CONNECTION_OPTIONS",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_KERNEL_DIED",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "add_connection_options",
    "add_settings_options",
    "configure_logging",
    "connection_from_args",
    "error_line",
    "exit_code_for",
    "settings_from_args",
]

EXIT_OK = 0
EXIT_FAILED = 1  # the work itself failed: a cell raised, a command exited non-zero, a stop failed
EXIT_CONFIG = 2  # a flag, setting or config file is wrong
EXIT_REMOTE = 3  # cannot connect, or the server refused our credentials
EXIT_TIMEOUT = 4  # a named time budget ran out
EXIT_KERNEL_DIED = 5  # the kernel died or restarted under a run
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

CONNECTION_OPTIONS = ("url", "token", "token_file", "cookies", "verify_tls", "request_timeout")


def exit_code_for(exc: LamplighterError) -> int:
    """The documented exit status for an error (most specific class first)."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, RemoteTimeout):
        return EXIT_TIMEOUT
    if isinstance(exc, KernelDied):
        return EXIT_KERNEL_DIED
    if isinstance(exc, CellFailed):
        return EXIT_FAILED
    if isinstance(exc, ConnectFailed | AuthRejected | RemoteError):
        return EXIT_REMOTE
    return EXIT_FAILED


def error_line(problem: BaseException | str) -> str:
    """The one line an expected failure prints, under the redaction rule."""
    return redact(f"lamplighter: {problem}")


def _describe_default(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_settings_options(
    parser: argparse.ArgumentParser,
    *,
    names: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
) -> None:
    """Add one flag per setting (selected by name or group), generated from :mod:`lamplighter.settings`.

    Flags default to ``SUPPRESS`` so only what the user typed reaches :func:`settings_from_args`.
    """
    wanted_names = set(names or ())
    wanted_groups = set(groups or ())
    sections: dict[str, argparse._ArgumentGroup] = {}
    for spec in option_specs():
        meta = spec.metadata
        if spec.name not in wanted_names and meta["group"] not in wanted_groups:
            continue
        section = sections.setdefault(meta["group"], parser.add_argument_group(f"{meta['group']} settings"))
        env = meta["env"] or (f"LAMPLIGHTER_{spec.name.upper()}",)
        default = "a state-dir file" if spec.name == "journal" else _describe_default(spec.default)
        bounds = describe_bounds(spec)
        limits = f"range {bounds}; " if bounds else ""
        text = f"{meta['help']} [{limits}default: {default}; env {', '.join(env)}]".replace("%", "%%")
        flag = "--" + spec.name.replace("_", "-")
        if meta["parse"].__name__ == "parse_bool":
            negative = "--" + (meta["negative"] or f"no-{spec.name.replace('_', '-')}")
            section.add_argument(
                flag, dest=spec.name, action="store_const", const="true", default=argparse.SUPPRESS, help=text
            )
            section.add_argument(
                negative,
                dest=spec.name,
                action="store_const",
                const="false",
                default=argparse.SUPPRESS,
                help=f"The opposite of {flag}.",
            )
        else:
            choices = getattr(meta["parse"], "choices", None)
            metavar = "{" + ",".join(choices) + "}" if choices else spec.name.split("_")[-1].upper()
            section.add_argument(flag, dest=spec.name, metavar=metavar, default=argparse.SUPPRESS, help=text)
    if "config" not in {a.dest for a in parser._actions}:
        parser.add_argument(
            "--config",
            type=Path,
            default=None,
            metavar="PATH",
            help="TOML settings file [env LAMPLIGHTER_CONFIG].",
        )


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The flags that reach a server: url, token, token file, cookies, TLS, request timeout."""
    add_settings_options(parser, names=CONNECTION_OPTIONS)


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from defaults < TOML < env < the flags the user typed < ``overrides``."""
    names = {spec.name for spec in option_specs()}
    flags = {name: getattr(args, name) for name in names if hasattr(args, name)}
    flags.update(overrides)
    return load_settings(flags, config_path=getattr(args, "config", None))


def connection_from_args(args: argparse.Namespace) -> Connection:
    """A :class:`Connection` built from the connection flags, env and config file."""
    return connection_from_settings(settings_from_args(args))


def configure_logging(level: str, *, stream: Any = None) -> None:
    """Plain timestamped lines on stderr, redacted; httpx's per-request lines only at debug.

    The redaction sits on the one handler, so it covers every logger at every level, the
    libraries' (httpx, httpcore, websockets, botocore) included.
    """
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=stream or sys.stderr,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for noisy in ("httpx", "httpcore", "websockets", "asyncio", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(quiet, logging.getLogger().level))
