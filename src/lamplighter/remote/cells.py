"""Reading a notebook cell as papermill does: its tags and its source, whatever shape the file gave them."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PARAMETERS_TAG", "cell_source", "cell_tags"]

PARAMETERS_TAG = "parameters"


def cell_tags(cell: Mapping[str, object]) -> list[str]:
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, Mapping) else None
    return [str(t) for t in tags] if isinstance(tags, list) else []


def cell_source(cell: Mapping[str, object]) -> str:
    source = cell.get("source", "")
    return "".join(str(s) for s in source) if isinstance(source, list) else str(source)
