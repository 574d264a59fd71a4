# PYTHON_ARGCOMPLETE_OK
"""The ``lamplighter`` command: parse arguments, call one coroutine, print, exit with a named status.

Expected failures (:class:`~lamplighter.errors.LamplighterError`) print one line naming the problem
and exit with the status documented in :mod:`lamplighter.cli.common`; ``-v``/``--debug`` adds the
traceback and lamplighter's debug lines, ``-vv``/``--debug-http`` the HTTP and AWS libraries' too.
"""

from __future__ import annotations

import lamplighter.cli.httpx_import  # noqa: F401  # first: httpx without its CLI (click, rich)

# isort: split
import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from lamplighter import __version__
from lamplighter.cli.common import EXIT_CONFIG, EXIT_INTERRUPTED, Parser, exit_code_for, report_failure
from lamplighter.cli.completion import add_completion_parser
from lamplighter.cli.config import add_config_parser
from lamplighter.cli.core import add_core_parsers
from lamplighter.cli.hub import add_hub_parser
from lamplighter.cli.options import check_required
from lamplighter.cli.report import add_report_parsers
from lamplighter.cli.run import add_run_parser
from lamplighter.cli.sagemaker import add_sagemaker_parsers
from lamplighter.errors import LamplighterError
from lamplighter.settings import hide_given_secrets

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit status: 0 ok, 1 the work failed (a cell, a command, a stop), 2 bad usage or settings (the
journal included), 3 cannot connect or not authorised (watch --once: its probe failed), 4 a time
budget ran out, 5 the kernel died, 130 interrupted.
Every setting is also an environment variable LAMPLIGHTER_<NAME> and a key in the --config TOML file
(`lamplighter config` prints them all). -v/--debug and -vv/--debug-http go before or after the command.
Shell completion: eval "$(lamplighter completion bash)" (or zsh, fish)."""


class _Verbosity(argparse.Action):
    """``-v`` adds one level; ``--debug`` means at least 1, ``--debug-http`` 2."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        level = getattr(namespace, self.dest, None) or 0
        setattr(namespace, self.dest, level + 1 if self.const is None else max(level, self.const))


def _add_verbosity(parser: argparse.ArgumentParser, dest: str) -> None:
    group = parser.add_argument_group("output detail")
    common: dict[str, Any] = {"dest": dest, "nargs": 0, "action": _Verbosity}
    if dest == "verbose_after":  # in a command: only what the user typed there (see main)
        common["default"] = argparse.SUPPRESS
    group.add_argument(
        "-v",
        "--verbose",
        **common,
        help="Tracebacks for expected errors and lamplighter's debug lines; twice: as --debug-http.",
    )
    group.add_argument("--debug", const=1, **common, help="The same as -v.")
    group.add_argument(
        "--debug-http",
        const=2,
        **common,
        help="Also the HTTP, websocket and AWS libraries' debug lines (the same as -vv).",
    )


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser under ``parser`` that runs a command (those with no subcommands of their own)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _leaf_parsers(child) or [child]
    return found


def build_parser() -> argparse.ArgumentParser:
    # Typed as the base class so the subcommand builders keep their plain ArgumentParser signatures.
    parser: argparse.ArgumentParser = Parser(
        prog="lamplighter",
        description="Keeps notebook environments lit only while somebody is using them.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lamplighter {__version__}")
    _add_verbosity(parser, "verbose")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_core_parsers(commands)
    add_run_parser(commands)
    add_report_parsers(commands)
    add_sagemaker_parsers(commands)
    add_hub_parser(commands)
    add_config_parser(commands)
    add_completion_parser(commands)
    for leaf in _leaf_parsers(parser):
        _add_verbosity(leaf, "verbose_after")
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request, if this is one (argcomplete exits then)."""
    if "_ARGCOMPLETE" in os.environ:  # imported only then: `watch` never loads it
        import argcomplete

        argcomplete.autocomplete(parser)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of the parser and its commands' parsers, at any depth."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                found |= _option_strings(sub)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _complete(parser)
    verbosity = 0
    hide_given_secrets(sys.argv[1:] if argv is None else argv, os.environ, _option_strings(parser))
    try:
        # Inside the try: a flag's type raises ConfigError (one line) for a bad duration.
        args = parser.parse_args(argv)
        # A command's subparser fills only its own namespace: -v before and after it add up.
        verbosity = min(2, (args.verbose or 0) + getattr(args, "verbose_after", 0))
        args.verbosity = verbosity
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_CONFIG
        check_required(args)
        return int(handler(args))
    except KeyboardInterrupt:
        print("lamplighter: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LamplighterError as exc:
        report_failure(exc, verbosity=verbosity)
        return exit_code_for(exc)
