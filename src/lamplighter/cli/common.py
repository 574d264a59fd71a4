"""What every command shares: exit statuses, settings flags generated from the declarations, logging."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

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
from lamplighter.model import parse_timestamp
from lamplighter.redaction import RedactingFilter, redact
from lamplighter.remote.connection import Connection, connection_from_settings
from lamplighter.settings import (
    Settings,
    describe_bounds,
    load_settings,
    option_specs,
    parse_bool,
    parse_duration,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite
    from rich.console import Console

__all__ = [
    "CONNECTION_OPTIONS",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_KERNEL_DIED",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "Parser",
    "add_command",
    "add_connection_options",
    "add_settings_options",
    "configure_logging",
    "connection_from_args",
    "console",
    "error_line",
    "exit_code_for",
    "parse_since",
    "report_failure",
    "settings_from_args",
    "start_logging",
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


def report_failure(exc: BaseException, *, verbosity: int = 0) -> None:
    """The error's one line on stderr; with ``-v``/``--debug`` its traceback first."""
    if verbosity:
        print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
    print(error_line(exc), file=sys.stderr)


def _describe_default(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    *,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand; an epilog is kept as written (they are laid out by hand: tables of exit statuses)."""
    if epilog is None:
        return commands.add_parser(name, help=help, description=description)
    return commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_settings_options(
    parser: argparse.ArgumentParser,
    *,
    names: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per setting (selected by name or group), generated from :mod:`lamplighter.settings`.

    Flags default to ``SUPPRESS`` so only what the user typed reaches :func:`settings_from_args`. A
    setting in ``defaults`` has that command's own default instead, and is then taken from the flag
    only (neither the environment nor the config file applies to it in that command).
    """
    defaults = dict(defaults or {})
    wanted_names = set(names or ()) | set(defaults)
    wanted_groups = set(groups or ())
    sections: dict[str, argparse._ArgumentGroup] = {}
    for spec in option_specs():
        meta = spec.metadata
        if spec.name not in wanted_names and meta["group"] not in wanted_groups:
            continue
        section = sections.setdefault(meta["group"], parser.add_argument_group(f"{meta['group']} settings"))
        env = meta["env"] or (f"LAMPLIGHTER_{spec.name.upper()}",)
        default = "a state-dir file" if spec.name == "journal" else _describe_default(spec.default)
        sources = f"default: {default}; env {', '.join(env)}"
        if spec.name in defaults:
            own = defaults[spec.name]
            shown = _describe_default(parse_bool(own)) if meta["parse"] is parse_bool else own
            sources = f"default: {shown}"
        bounds = describe_bounds(spec)
        limits = f"range {bounds}; " if bounds else ""
        text = f"{meta['help']} [{limits}{sources}]".replace("%", "%%")
        flag = "--" + spec.name.replace("_", "-")
        initial = defaults.get(spec.name, argparse.SUPPRESS)
        if meta["parse"].__name__ == "parse_bool":
            negative = "--" + (meta["negative"] or f"no-{spec.name.replace('_', '-')}")
            section.add_argument(
                flag, dest=spec.name, action="store_const", const="true", default=initial, help=text
            )
            section.add_argument(
                negative, dest=spec.name, action="store_const", const="false", help=f"The opposite of {flag}."
            )
        else:
            choices = getattr(meta["parse"], "choices", None)
            metavar = "{" + ",".join(choices) + "}" if choices else spec.name.split("_")[-1].upper()
            section.add_argument(flag, dest=spec.name, metavar=metavar, default=initial, help=text)
    # --config only where a setting reads it: one with a command default is taken from its flag alone.
    reads_config = any(
        spec.name not in defaults
        for spec in option_specs()
        if spec.name in wanted_names or spec.metadata["group"] in wanted_groups
    )
    if reads_config and "config" not in {a.dest for a in parser._actions}:
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


#: The libraries whose own debug lines (requests, handshakes, AWS calls) show only at -vv or
#: ``--log-level debug``; lamplighter's own at -v.
_LIBRARIES = ("httpx", "httpcore", "websockets", "asyncio", "botocore", "boto3", "urllib3")


def configure_logging(level: str, *, verbosity: int = 0, stream: Any = None) -> None:
    """Plain timestamped lines on stderr, redacted, at ``level`` (the ``log_level`` setting).

    ``verbosity`` 1 (``-v``, ``--debug``) adds lamplighter's own debug lines; 2 (``-vv``,
    ``--debug-http``) the libraries' too, as ``--log-level debug`` does. The redaction sits on the
    one handler, so it covers every logger at every level, the libraries' included.
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
    logging.getLogger("lamplighter").setLevel(logging.DEBUG if verbosity >= 1 else logging.NOTSET)
    loud = level == "debug" or verbosity >= 2
    for library in _LIBRARIES:
        logging.getLogger(library).setLevel(
            logging.DEBUG if loud else max(logging.WARNING, logging.getLogger().level)
        )


def start_logging(args: argparse.Namespace, level: str) -> None:
    """:func:`configure_logging` at ``level`` with the ``-v``/``--debug`` the user gave."""
    configure_logging(level, verbosity=getattr(args, "verbosity", 0))


def console(*, stderr: bool = False, width: int | None = None) -> Console:
    """The rich console for tables and progress: colour only on a terminal and without ``NO_COLOR``.

    rich decides both itself (a pipe or a file gets plain text; ``NO_COLOR`` set to anything drops
    colour, ``FORCE_COLOR`` forces it); this is the one place that makes one, so it stays so.
    """
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, width=width)


class Parser(argparse.ArgumentParser):
    """argparse with the redaction rule on everything it prints, and usage errors as one line.

    Subparsers are built with the parent's class, so one override covers every command; a command that
    needs its own parser class (``run``) derives it from this one.
    """

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        super()._print_message(redact(message) if message else message, file)

    def error(self, message: str) -> NoReturn:
        # One line, as every other bad input gets; the usage is one --help away.
        command = self.prog.removeprefix("lamplighter").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_CONFIG, error_line(f"{where}{message} (see {self.prog} --help)") + "\n")


def parse_since(text: str) -> datetime:
    """``--since``: a duration back from now (``2h``) or an ISO time."""
    try:
        return datetime.now(timezone.utc) - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_timestamp(text)
    except ValueError:
        raise ConfigError(f"--since: expected a duration (2h) or an ISO time, got {text!r}") from None
