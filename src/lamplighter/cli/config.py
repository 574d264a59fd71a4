"""The ``config`` command: the effective settings as a TOML file to edit and load back with ``--config``.

Like the ``--generate-config`` of Jupyter's tools: every setting, with its help, range, default and
environment variables as comments; the ones whose value is not the default are uncommented. Secrets
(token, cookies) are never written, only whether they are set.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import MISSING
from datetime import timedelta
from pathlib import Path
from typing import Any

from lamplighter import __version__
from lamplighter.cli.common import EXIT_OK, add_settings_options, settings_from_args
from lamplighter.redaction import redact
from lamplighter.settings import Settings, describe_bounds, duration_text, option_specs

__all__ = ["add_config_parser", "render_config"]

_HEADER = f"""\
# lamplighter {__version__} settings, from `lamplighter config`: the defaults, the config file, the
# environment and the flags given, as the commands would see them now. Settings whose value is not the
# default are uncommented. Load this file with --config FILE or LAMPLIGHTER_CONFIG=FILE, or save it as
# ~/.config/lamplighter/config.toml; environment variables and flags still win over it."""


def add_config_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "config",
        help="Print the effective settings as a TOML file to edit and load with --config.",
        description="Print every setting with its help; set ones uncommented. Secrets are never printed.",
    )
    add_settings_options(parser, names=[spec.name for spec in option_specs()])
    parser.set_defaults(handler=_config)


def _config(args: argparse.Namespace) -> int:
    print(render_config(settings_from_args(args)), end="")
    return EXIT_OK


def render_config(settings: Settings) -> str:
    """``settings`` as TOML that :func:`~lamplighter.settings.load_settings` reads back to the same."""
    lines = [_HEADER]
    group = None
    for spec in option_specs():
        meta = spec.metadata
        if meta["group"] != group:
            group = meta["group"]
            lines += ["", f"# == {group} ".ljust(100, "=")]
        lines.append("")
        lines += textwrap.wrap(meta["help"], 98, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"# [{_about(spec)}]")
        value = getattr(settings, spec.name)
        if meta["secret"]:
            where = " or ".join(meta["env"] or (f"LAMPLIGHTER_{spec.name.upper()}",))
            lines.append(
                f"# {spec.name}: {'set' if value else 'not set'}; a secret, never written here ({where})"
            )
            continue
        line = f"{spec.name} = {_toml(spec, value)}"
        # Redacted like all output: a --command holding a credential loses it here.
        lines.append(redact(line) if value != _default(spec) else f"# {redact(line)}")
    return "\n".join(lines) + "\n"


def _default(spec: Any) -> Any:
    return spec.default_factory() if spec.default is MISSING else spec.default


def _about(spec: Any) -> str:
    bounds = describe_bounds(spec)
    env = spec.metadata["env"] or (f"LAMPLIGHTER_{spec.name.upper()}",)
    default = _default(spec)
    shown = "off" if default is None else _toml(spec, default).strip('"')
    return "; ".join(
        filter(None, (f"range {bounds}" if bounds else "", f"default {shown}", f"env {', '.join(env)}"))
    )


def _toml(spec: Any, value: Any) -> str:
    """A value as TOML, in the form the setting's own parser reads back."""
    if value is None:
        # Optional strings read "" as unset; every other optional setting reads "off".
        return '""' if spec.metadata["parse"].__name__ == "_parse_optional_str" else '"off"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        return _string(duration_text(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_string(str(item)) for item in value) + "]"
    return _string(str(value) if isinstance(value, Path) else value)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, but for DEL, which TOML wants escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
