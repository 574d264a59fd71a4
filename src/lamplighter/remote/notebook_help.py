"""papermill's ``--help-notebook``: the parameters a notebook declares in its ``parameters`` cell.

This follows ``papermill/inspection.py`` (``display_notebook_help``, ``_infer_parameters``) and
``PythonTranslator.inspect`` in ``papermill/translators.py``, so the same notebook gets the same text:
each assignment in the first cell tagged ``parameters`` becomes a name, a type (its annotation or
``# type:`` comment), the default as written, and the help comment at the end of its line. papermill
can read only Python; for any other language it says it cannot infer anything, and so does this.
Nothing here needs a kernel: the notebook alone is read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lamplighter.errors import ConfigError
from lamplighter.remote.cells import PARAMETERS_TAG, cell_source, cell_tags
from lamplighter.remote.parameters import PythonTranslator, find_translator

__all__ = [
    "NO_PARAMETERS_CELL",
    "NotebookParameter",
    "infer_parameters",
    "inspect_python",
    "notebook_help",
]

logger = logging.getLogger(__name__)

#: papermill's exit status when the notebook has no ``parameters`` cell (``display_notebook_help``
#: returns 1 then, 0 otherwise).
NO_PARAMETERS_CELL = 1

# papermill's PARAMETER_PATTERN, verbatim: `name[: annotation] = value[  # [type: T] help]`.
_PARAMETER = re.compile(
    r"^(?P<target>\w[\w_]*)\s*(:\s*[\"']?(?P<annotation>\w[\w_\[\],\s]*)[\"']?\s*)?=\s*(?P<value>.*?)"
    r"(\s*#\s*(type:\s*(?P<type_comment>[^\s]*)\s*)?(?P<help>.*))?$"
)


@dataclass(frozen=True)
class NotebookParameter:
    """papermill's ``Parameter``: all four are the text as written; the type is ``"None"`` when unknown."""

    name: str
    inferred_type_name: str
    default: str
    help: str


def _flatten(lines: Sequence[str]) -> str:
    """One definition spread over lines, joined; comments kept only on its last line (the help)."""
    flat = ""
    for line in lines[:-1]:
        flat += (line[: line.index("#")] if "#" in line else line).strip()
    if lines:
        flat += lines[-1].strip()
    return flat


def inspect_python(source: str) -> list[NotebookParameter]:
    """The parameters of a Python ``parameters`` cell, as papermill's ``PythonTranslator.inspect`` reads them.

    A line with an ``=`` starts a definition and the lines after it without one continue it (a list or
    dict written over several lines); blank and comment lines are skipped; a line with more than one
    ``=`` (``a = b = 1``) is skipped with a warning, as papermill skips it.
    """
    groups: list[str] = []
    pending: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        equals = line.count("=")
        if equals:
            groups.append(_flatten(pending))
            pending = []
            if equals > 1:
                logger.warning("Unable to parse line %d '%s'.", number, line)
                continue
        pending.append(line)
    groups.append(_flatten(pending))
    found: list[NotebookParameter] = []
    for definition in groups:
        match = _PARAMETER.match(definition) if definition else None
        if match is None:
            continue
        parts = match.groupdict()
        found.append(
            NotebookParameter(
                name=parts["target"].strip(),
                inferred_type_name=str(parts["annotation"] or parts["type_comment"] or None).strip(),
                default=str(parts["value"]).strip(),
                help=str(parts["help"] or "").strip(),
            )
        )
    return found


def parameters_cell(nb: Mapping[str, object]) -> Mapping[str, object] | None:
    """The first cell tagged ``parameters``, or None."""
    cells = nb.get("cells")
    for cell in cells if isinstance(cells, list) else []:
        if isinstance(cell, Mapping) and PARAMETERS_TAG in cell_tags(cell):
            return cell
    return None


def _metadata_field(nb: Mapping[str, object], key: str, field: str) -> str | None:
    metadata = nb.get("metadata")
    section = metadata.get(key) if isinstance(metadata, Mapping) else None
    value = section.get(field) if isinstance(section, Mapping) else None
    return str(value) if value else None


def infer_parameters(
    nb: Mapping[str, object],
    *,
    kernel_name: str | None = None,
    language: str | None = None,
    explain: bool = True,
) -> list[NotebookParameter] | None:
    """The parameters of ``nb``'s ``parameters`` cell ([] when it has none), or None when the
    notebook's language cannot be read (papermill reads Python only).

    The translator is chosen as papermill chooses it: ``kernel_name`` (default: the notebook's
    kernelspec name), else ``language`` (default: ``language_info.name``, then ``kernelspec.language``).
    ``explain``: log why the parameters cannot be read, as papermill's ``--help-notebook`` does.
    """
    cell = parameters_cell(nb)
    if cell is None:
        return []
    kernel_name = kernel_name or _metadata_field(nb, "kernelspec", "name")
    language = (
        language
        or _metadata_field(nb, "language_info", "name")
        or _metadata_field(nb, "kernelspec", "language")
    )
    try:
        translator = find_translator(kernel_name, language)
    except ConfigError:
        # papermill stops with a traceback here; the notebook is fine, only its language is unknown.
        if explain:
            logger.warning("No parameter translator for kernel '%s' or language '%s'.", kernel_name, language)
        return None
    if not issubclass(translator, PythonTranslator):
        if explain:
            logger.warning("Translator for '%s' language does not support parameter introspection.", language)
        return None
    return inspect_python(cell_source(cell))


def _describe(parameter: NotebookParameter) -> str:
    """One parameter, laid out as papermill lays it out (help at column 34, or on its own line)."""
    type_name = "Unknown type" if parameter.inferred_type_name == "None" else parameter.inferred_type_name
    definition = f"  {parameter.name}: {type_name} (default {parameter.default})"
    if len(definition) > 30:
        return f"{definition}\n{34 * ' '}{parameter.help}" if parameter.help else definition
    return f"{definition:<34}{parameter.help}"


def notebook_help(
    nb: Mapping[str, object],
    path: str,
    *,
    usage: str,
    kernel_name: str | None = None,
    language: str | None = None,
) -> tuple[str, int]:
    """papermill's ``--help-notebook`` text for ``nb`` (read from ``path``) and its exit status."""
    lines = [usage, "", f"Parameters inferred for notebook '{path}':"]
    if parameters_cell(nb) is None:
        return "\n".join([*lines, "", "  No cell tagged 'parameters'", ""]), NO_PARAMETERS_CELL
    found = infer_parameters(nb, kernel_name=kernel_name, language=language)
    if found:
        lines.extend(_describe(p) for p in found)
    else:
        lines.extend(
            [
                "",
                "  Can't infer anything about this notebook's parameters. It may not have any parameter defined.",
            ]
        )
    return "\n".join([*lines, ""]), 0
