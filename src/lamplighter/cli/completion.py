"""The ``completion`` command: the shell script that makes tab complete lamplighter's commands and flags.

The completing itself is argcomplete's: the script calls ``lamplighter`` back with the line typed so
far, and :func:`lamplighter.cli.main` answers before it parses anything.
"""

from __future__ import annotations

import argparse

from lamplighter.cli.common import EXIT_OK

__all__ = ["SHELLS", "add_completion_parser"]

SHELLS = ("bash", "zsh", "fish")


def add_completion_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "completion",
        help='Print the shell completion script: eval "$(lamplighter completion bash)".',
        description="Print a script that makes the shell complete lamplighter's commands and flags. "
        'Add to ~/.bashrc: eval "$(lamplighter completion bash)"; to ~/.zshrc: '
        'eval "$(lamplighter completion zsh)"; for fish: lamplighter completion fish | source.',
    )
    parser.add_argument("shell", choices=SHELLS, help="The shell.")
    parser.set_defaults(handler=_completion)


def _completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["lamplighter"], shell=args.shell), end="")
    return EXIT_OK
