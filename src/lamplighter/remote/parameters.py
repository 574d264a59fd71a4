"""papermill's parameters, reproduced: value typing, the merge order of the flags, and the translators.

A papermill user's job must get the same injected cell from ``run notebook``, byte for byte, so this
module follows ``papermill/cli.py`` (``_resolve_type``, the order ``-b``, ``-f``, ``-y``, ``-p``,
``-r``), ``papermill/iorw.py`` (``NoDatesSafeLoader``: YAML dates stay strings) and
``papermill/translators.py`` (one translator per language, looked up by kernel name first, then by
language). papermill is not imported: lamplighter must run without it, and
``tests/test_papermill_parity.py`` compares every translator here with papermill's own over many values.

One deliberate difference: papermill pipes Python parameters through ``black`` when black happens to be
installed; here they are never reformatted (papermill's output without black).
"""

from __future__ import annotations

import base64
import math
import shlex
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import yaml

from lamplighter.errors import ConfigError

__all__ = [
    "TRANSLATORS",
    "Translator",
    "find_translator",
    "merge_parameters",
    "parameterize_path",
    "resolve_type",
    "translate_parameters",
]


def resolve_type(value: str) -> Any:
    """``-p``'s typing: ``True``/``False``/``None``, then whatever ``int()`` or ``float()`` accepts
    (so ``nan``, ``-inf``, ``1_000``), else the string."""
    if value == "True":
        return True
    if value == "False":
        return False
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class _NoDatesSafeLoader(yaml.SafeLoader):
    """papermill's YAML loader: ``2024-01-02`` stays the string it was typed as, not a ``date``."""


_NoDatesSafeLoader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_yaml(where: str, text: str | bytes) -> dict[str, Any]:
    try:
        loaded = yaml.load(text, Loader=_NoDatesSafeLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})".replace("\n", " ")) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values")
    return loaded


def merge_parameters(
    *,
    base64_yaml: Iterable[str] = (),
    files: Iterable[tuple[str, str]] = (),
    yaml_texts: Iterable[str] = (),
    typed: Iterable[Sequence[str]] = (),
    raw: Iterable[Sequence[str]] = (),
) -> dict[str, Any]:
    """All parameter flags merged as papermill merges them: each kind in the order given, the kinds in
    the order ``-b``, ``-f`` (``(name, text)`` pairs), ``-y``, ``-p``, ``-r``; later wins."""
    merged: dict[str, Any] = {}
    for text in base64_yaml:
        try:
            decoded = base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise ConfigError(f"--parameters_base64: not base64 ({exc})") from exc
        merged.update(_load_yaml("--parameters_base64", decoded))
    for name, text in files:
        merged.update(_load_yaml(name, text))
    for text in yaml_texts:
        merged.update(_load_yaml("--parameters_yaml", text))
    for name, value in typed:
        merged[name] = resolve_type(value)
    for name, value in raw:
        merged[name] = value
    return merged


# -- translators ------------------------------------------------------------------------------------


class _NotTranslatable(Exception):
    """A value the language's translator has no form for (papermill raises NotImplementedError)."""


class Translator:
    """papermill's ``Translator``: how one language writes each JSON/YAML type, and the cell around them."""

    comment_format: ClassVar[str] = "# {}"

    @classmethod
    def translate_raw_str(cls, val: Any) -> str:
        return f"{val}"

    @classmethod
    def translate_escaped_str(cls, str_val: Any) -> str:
        if isinstance(str_val, str):
            str_val = str_val.encode("unicode_escape").decode("utf-8").replace('"', r"\"")
        return f'"{str_val}"'

    @classmethod
    def translate_str(cls, val: Any) -> str:
        return cls.translate_escaped_str(val)

    @classmethod
    def translate_none(cls, val: None) -> str:
        return cls.translate_raw_str(val)

    @classmethod
    def translate_int(cls, val: int) -> str:
        return cls.translate_raw_str(val)

    @classmethod
    def translate_float(cls, val: float) -> str:
        return cls.translate_raw_str(val)

    @classmethod
    def translate_bool(cls, val: bool) -> str:
        return "true" if val else "false"

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        raise _NotTranslatable("a mapping")

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        raise _NotTranslatable("a list")

    @classmethod
    def translate(cls, val: Any) -> str:
        # The order matters as papermill's does: str before bool, bool before int.
        if val is None:
            return cls.translate_none(val)
        if isinstance(val, str):
            return cls.translate_str(val)
        if isinstance(val, bool):
            return cls.translate_bool(val)
        if isinstance(val, int):
            return cls.translate_int(val)
        if isinstance(val, float):
            return cls.translate_float(val)
        if isinstance(val, dict):
            return cls.translate_dict(val)
        if isinstance(val, list):
            return cls.translate_list(val)
        return cls.translate_escaped_str(val)

    @classmethod
    def comment(cls, text: str) -> str:
        return cls.comment_format.format(text).strip()

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        return f"{name} = {str_val}"

    @classmethod
    def line(cls, name: str, val: Any) -> str:
        return cls.assign(name, cls.translate(val))

    @classmethod
    def codify(cls, parameters: Mapping[str, Any], comment: str = "Parameters") -> str:
        content = f"{cls.comment(comment)}\n"
        for name, val in parameters.items():
            content += f"{cls.line(name, val)}\n"
        return content


def _big_int_suffix(val: int) -> str:
    return f"{val}L" if (val > 2147483647 or val < -2147483648) else f"{val}"


class PythonTranslator(Translator):
    @classmethod
    def translate_float(cls, val: float) -> str:
        if math.isfinite(val):
            return cls.translate_raw_str(val)
        if math.isnan(val):
            return "float('nan')"
        return "float('-inf')" if val < 0 else "float('inf')"

    @classmethod
    def translate_bool(cls, val: bool) -> str:
        return cls.translate_raw_str(val)

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        escaped = ", ".join(f"{cls.translate_str(k)}: {cls.translate(v)}" for k, v in val.items())
        return f"{{{escaped}}}"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"[{', '.join(cls.translate(v) for v in val)}]"


class RTranslator(Translator):
    @classmethod
    def translate_none(cls, val: None) -> str:
        return "NULL"

    @classmethod
    def translate_bool(cls, val: bool) -> str:
        return "TRUE" if val else "FALSE"

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        escaped = ", ".join(f"{cls.translate_str(k)} = {cls.translate(v)}" for k, v in val.items())
        return f"list({escaped})"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"list({', '.join(cls.translate(v) for v in val)})"

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        # R names cannot start with "_": papermill drops the leading underscores.
        return f"{name.lstrip('_')} = {str_val}"


class ScalaTranslator(Translator):
    comment_format = "// {}"

    @classmethod
    def translate_int(cls, val: int) -> str:
        return _big_int_suffix(val)

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        escaped = ", ".join(f"{cls.translate_str(k)} -> {cls.translate(v)}" for k, v in val.items())
        return f"Map({escaped})"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"Seq({', '.join(cls.translate(v) for v in val)})"

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        return f"val {name} = {str_val}"


class JuliaTranslator(Translator):
    @classmethod
    def translate_none(cls, val: None) -> str:
        return "nothing"

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        escaped = ", ".join(f"{cls.translate_str(k)} => {cls.translate(v)}" for k, v in val.items())
        return f"Dict({escaped})"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"[{', '.join(cls.translate(v) for v in val)}]"


class MatlabTranslator(Translator):
    comment_format = "% {}"

    @classmethod
    def translate_escaped_str(cls, str_val: Any) -> str:
        if isinstance(str_val, str):
            str_val = str_val.encode("unicode_escape").decode("utf-8").replace('"', '""')
        return f'"{str_val}"'

    @classmethod
    def _char_array(cls, str_val: Any) -> str:
        if isinstance(str_val, str):
            str_val = str_val.encode("unicode_escape").decode("utf-8").replace("'", "''")
        return f"'{str_val}'"

    @classmethod
    def translate_none(cls, val: None) -> str:
        return "NaN"

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        keys = ", ".join(cls._char_array(k) for k in val)
        vals = ", ".join(cls.translate(v) for v in val.values())
        return f"containers.Map({{{keys}}}, {{{vals}}})"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"{{{', '.join(cls.translate(v) for v in val)}}}"

    @classmethod
    def line(cls, name: str, val: Any) -> str:
        return f"{super().line(name, val)};"


class CSharpTranslator(Translator):
    comment_format = "// {}"

    @classmethod
    def translate_none(cls, val: None) -> str:
        raise _NotTranslatable("None")

    @classmethod
    def translate_int(cls, val: int) -> str:
        return _big_int_suffix(val)

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        kvps = ", ".join(f"{{ {cls.translate_str(k)} , {cls.translate(v)} }}" for k, v in val.items())
        return f"new Dictionary<string,Object>{{ {kvps} }}"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"new [] {{ {', '.join(cls.translate(v) for v in val)} }}"

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        return f"var {name} = {str_val};"


class FSharpTranslator(Translator):
    comment_format = "(* {} *)"

    @classmethod
    def translate_none(cls, val: None) -> str:
        return "None"

    @classmethod
    def translate_int(cls, val: int) -> str:
        return _big_int_suffix(val)

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        tuples = "; ".join(
            f"({cls.translate_str(k)}, {cls.translate(v)} :> IComparable)" for k, v in val.items()
        )
        return f"[ {tuples} ] |> Map.ofList"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"[ {'; '.join(cls.translate(v) for v in val)} ]"

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        return f"let {name} = {str_val}"


class PowershellTranslator(Translator):
    @classmethod
    def translate_escaped_str(cls, str_val: Any) -> str:
        if isinstance(str_val, str):
            str_val = str_val.encode("unicode_escape").decode("utf-8").replace('"', '`"')
        return f'"{str_val}"'

    @classmethod
    def translate_float(cls, val: float) -> str:
        if math.isfinite(val):
            return cls.translate_raw_str(val)
        if math.isnan(val):
            return "[double]::NaN"
        return "[double]::NegativeInfinity" if val < 0 else "[double]::PositiveInfinity"

    @classmethod
    def translate_none(cls, val: None) -> str:
        return "$Null"

    @classmethod
    def translate_bool(cls, val: bool) -> str:
        return "$True" if val else "$False"

    @classmethod
    def translate_dict(cls, val: Mapping[Any, Any]) -> str:
        kvps = "\n ".join(f"{cls.translate_str(k)} = {cls.translate(v)}" for k, v in val.items())
        return f"@{{{kvps}}}"

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"@({', '.join(cls.translate(v) for v in val)})"

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        return f"${name} = {str_val}"


class BashTranslator(Translator):
    @classmethod
    def translate_none(cls, val: None) -> str:
        return ""

    @classmethod
    def translate_escaped_str(cls, str_val: Any) -> str:
        return shlex.quote(str(str_val))

    @classmethod
    def translate_list(cls, val: Sequence[Any]) -> str:
        return f"({' '.join(cls.translate(v) for v in val)})"

    @classmethod
    def assign(cls, name: str, str_val: str) -> str:
        return f"{name}={str_val}"


#: papermill's registry: kernel names and language names (case as papermill has them: ``R``).
TRANSLATORS: dict[str, type[Translator]] = {
    "python": PythonTranslator,
    "R": RTranslator,
    "scala": ScalaTranslator,
    "julia": JuliaTranslator,
    "matlab": MatlabTranslator,
    ".net-csharp": CSharpTranslator,
    ".net-fsharp": FSharpTranslator,
    ".net-powershell": PowershellTranslator,
    "pysparkkernel": PythonTranslator,
    "sparkkernel": ScalaTranslator,
    "sparkrkernel": RTranslator,
    "bash": BashTranslator,
}


def find_translator(kernel_name: str | None, language: str | None) -> type[Translator]:
    """The translator for the kernel name, else for the language, as papermill looks them up."""
    for key in (kernel_name, language):
        if key and key in TRANSLATORS:
            return TRANSLATORS[key]
    raise ConfigError(
        f"parameters: no translator for kernel {kernel_name!r} or language {language!r} "
        f"(papermill's languages: {', '.join(sorted(TRANSLATORS, key=str.lower))})"
    )


def translate_parameters(
    kernel_name: str | None, language: str | None, parameters: Mapping[str, Any], comment: str = "Parameters"
) -> str:
    """The source of the ``injected-parameters`` cell, as papermill writes it."""
    translator = find_translator(kernel_name, language)
    try:
        return translator.codify(parameters, comment)
    except _NotTranslatable as exc:
        raise ConfigError(
            f"parameters: {translator.__name__.removesuffix('Translator')} has no form for {exc} "
            "(neither has papermill)"
        ) from None


def parameterize_path(flag: str, path: str, parameters: Mapping[str, Any]) -> str:
    """papermill's ``parameterize_path``: ``path`` as a format string over the parameters and papermill's
    built-in ``pm`` (``{pm[run_uuid]}``, ``{pm[current_datetime_utc]:%Y%m%d}``); a one-line
    :class:`ConfigError` naming ``flag`` where papermill raises (a missing name) or gives a traceback."""
    values = {
        "pm": {
            "run_uuid": str(uuid.uuid4()),
            "current_datetime_local": datetime.now(),
            "current_datetime_utc": datetime.now(timezone.utc),
        },
        **parameters,
    }
    try:
        return path.format(**values)
    except KeyError as exc:
        raise ConfigError(f"{flag}: missing parameter {exc} for {path!r}") from None
    except (IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{flag}: {path!r} is not a format string over the parameters ({exc})") from None
