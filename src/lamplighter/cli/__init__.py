"""The ``lamplighter`` command: parse arguments, call one coroutine, print, exit with a named status.

Expected failures (:class:`~lamplighter.errors.LamplighterError`) print one line naming the problem
and exit with the status documented in :mod:`lamplighter.cli.common`; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import TYPE_CHECKING

from lamplighter import __version__
from lamplighter.cli.common import EXIT_CONFIG, EXIT_INTERRUPTED, error_line, exit_code_for
from lamplighter.cli.core import add_core_parsers
from lamplighter.cli.run import add_run_parser
from lamplighter.cli.sagemaker import add_sagemaker_parsers
from lamplighter.errors import LamplighterError
from lamplighter.redaction import redact

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit status: 0 ok, 1 the work failed (a cell, a command, a stop), 2 bad usage or settings (the
journal included), 3 cannot connect or not authorised (watch --once: its probe failed), 4 a time
budget ran out, 5 the kernel died, 130 interrupted.
Every setting is also an environment variable LAMPLIGHTER_<NAME> and a key in the --config TOML file."""


class _Parser(argparse.ArgumentParser):
    """argparse with the redaction rule on everything it prints: help, usage and its errors.

    Subparsers are built with the parent's class, so one override covers every command.
    """

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        super()._print_message(redact(message) if message else message, file)


def build_parser() -> argparse.ArgumentParser:
    # Typed as the base class so the subcommand builders keep their plain ArgumentParser signatures.
    parser: argparse.ArgumentParser = _Parser(
        prog="lamplighter",
        description="Keeps notebook environments lit only while somebody is using them.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lamplighter {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for expected errors too.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_core_parsers(commands)
    add_run_parser(commands)
    add_sagemaker_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        print("lamplighter: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LamplighterError as exc:
        if args.debug:
            print(redact(traceback.format_exc()), end="", file=sys.stderr)
        print(error_line(exc), file=sys.stderr)
        return exit_code_for(exc)
