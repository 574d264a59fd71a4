"""botocore's own model of the SageMaker API, held against what the emulator is sent and answers.

boto3 validates little on the client side (required members and types, no patterns, no enums) and
drops, without a word, any answer member the model does not name, so an emulator could accept what
SageMaker refuses and answer what SageMaker never says. :func:`check_request` refuses, as SageMaker's
request validation does, unknown members, missing required ones, values outside an enum, strings off
their pattern or length, numbers out of range; :func:`check_answer` fails (a bug in the emulator) on
an answer member the model does not have.
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = ["STRICT_OPERATIONS", "check_answer", "check_request"]

#: The operations whose requests and answers are held against the model.
STRICT_OPERATIONS = frozenset(
    {
        "CreateApp",
        "DeleteApp",
        "DescribeApp",
        "ListApps",
        # The fleet check's notebook-instance calls.
        "ListNotebookInstances",
        "DescribeNotebookInstanceLifecycleConfig",
    }
)


@functools.cache
def _model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


def check_request(operation: str, params: dict[str, Any]) -> str | None:
    """Why SageMaker would refuse these parameters (one line), or ``None``."""
    shape = _model().operation_model(operation).input_shape
    return _check(shape, params, operation)


def check_answer(operation: str, payload: dict[str, Any]) -> str | None:
    """A member of the answer that the model does not have, or ``None``."""
    shape = _model().operation_model(operation).output_shape
    if shape is None:
        return f"{operation} answers nothing, got {sorted(payload)}" if payload else None
    return _unknown(shape, payload, f"{operation} answer")


def _check(shape: Any, value: Any, where: str) -> str | None:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return f"{where}: expected a structure"
        unknown = set(value) - set(shape.members)
        if unknown:
            return f"{where}: unknown member(s) {', '.join(sorted(unknown))}"
        for name in shape.required_members:
            if name not in value:
                return f"{where}: {name} must not be null"
        for name, member in value.items():
            problem = _check(shape.members[name], member, f"{where}.{name}")
            if problem:
                return problem
        return None
    if kind == "list":
        if not isinstance(value, list):
            return f"{where}: expected a list"
        for index, item in enumerate(value):
            problem = _check(shape.member, item, f"{where}[{index}]")
            if problem:
                return problem
        return _length(shape, len(value), where)
    if kind == "string":
        if not isinstance(value, str):
            return f"{where}: expected a string"
        if shape.enum and value not in shape.enum:
            return f"{where}: {value!r} is not one of the allowed values"
        pattern = shape.metadata.get("pattern")
        if pattern and value and not re.fullmatch(pattern, value):
            return f"{where}: {value!r} does not match {pattern}"
        return _length(shape, len(value), where)
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{where}: expected an integer"
        return _length(shape, value, where)
    if kind == "boolean" and not isinstance(value, bool):
        return f"{where}: expected a boolean"
    return None


def _length(shape: Any, size: int, where: str) -> str | None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and size < low:
        return f"{where}: below the minimum {low}"
    if high is not None and size > high:
        return f"{where}: above the maximum {high}"
    return None


def _unknown(shape: Any, value: Any, where: str) -> str | None:
    if shape.type_name == "structure" and isinstance(value, dict):
        extra = set(value) - set(shape.members)
        if extra:
            return f"{where}: member(s) not in the model: {', '.join(sorted(extra))}"
        for name, member in value.items():
            problem = _unknown(shape.members[name], member, f"{where}.{name}")
            if problem:
                return problem
    if shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            problem = _unknown(shape.member, item, f"{where}[{index}]")
            if problem:
                return problem
    return None
