"""The public API and the error tree are the truth: pinned, complete, and every error is raised somewhere.

Also the layering: the bottom of the stack never imports what is built on it.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import lamplighter
from lamplighter import errors

SRC = Path(lamplighter.__file__).parent

PUBLIC = [
    "Action",
    "AuthRejected",
    "CellFailed",
    "ConfigError",
    "ConnectFailed",
    "Decision",
    "JournalError",
    "KernelDied",
    "LamplighterError",
    "MalformedAnswer",
    "Memory",
    "NotFound",
    "PlatformError",
    "RemoteError",
    "RemoteTimeout",
    "SageMakerCallFailed",
    "ServerSnapshot",
    "Settings",
    "Unsupported",
    "__version__",
    "decide",
    "load_settings",
]


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("lamplighter", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        trees[name] = ast.parse(path.read_text(), str(path))
    return trees


def _error_classes() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    }


def test_public_api_is_pinned_both_ways() -> None:
    # Every pinned name is exported and exists; nothing is exported that is not pinned.
    assert sorted(lamplighter.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(lamplighter, name), name
    # The whole error tree is public, and the tree's __all__ is exactly its classes.
    assert set(_error_classes()) <= set(PUBLIC)
    assert sorted(errors.__all__) == sorted(_error_classes())


def test_every_error_in_the_tree_is_raised_somewhere() -> None:
    used: set[str] = set()
    for name, tree in _modules().items():
        if name == "lamplighter.errors":
            continue
        used |= {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
    bases = {"LamplighterError", "RemoteError", "PlatformError"}  # caught and subclassed, raised as leaves
    unused = set(_error_classes()) - used - bases
    assert not unused, f"error classes nobody raises: {sorted(unused)} (raise them or remove them)"


def test_the_docstring_tree_names_every_error() -> None:
    doc = errors.__doc__ or ""
    assert [name for name in _error_classes() if not re.search(rf"\b{name}\b", doc)] == []


def test_no_public_exception_outside_the_tree() -> None:
    outside = []
    for name, tree in _modules().items():
        if name == "lamplighter.errors":
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & {"Exception", "BaseException", *_error_classes()}:
                    outside.append(f"{name}.{node.name}")
    assert outside == [], "errors a caller can meet belong in lamplighter.errors"


# What each layer may not import. The bottom (errors, model, redaction, server_url, retry, settings,
# policy, journal, heartbeat) knows nothing of how targets are reached, watched or commanded.
_BOTTOM = (
    "lamplighter.errors",
    "lamplighter.model",
    "lamplighter.redaction",
    "lamplighter.server_url",
    "lamplighter.retry",
    "lamplighter.settings",
    "lamplighter.policy",
    "lamplighter.journal",
    "lamplighter.heartbeat",
)
_ABOVE = (
    "lamplighter.cli",
    "lamplighter.demo",
    "lamplighter.wiring",
    "lamplighter.agent",
    "lamplighter.extension",
)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{
        module: (
            *_ABOVE,
            "lamplighter.remote",
            "lamplighter.platforms",
            "lamplighter.signals",
            "lamplighter.sagemaker",
        )
        for module in _BOTTOM
    },
    "lamplighter.remote": (*_ABOVE, "lamplighter.platforms", "lamplighter.sagemaker"),
    "lamplighter.signals": (*_ABOVE, "lamplighter.remote", "lamplighter.platforms"),
    "lamplighter.platforms": _ABOVE,
    "lamplighter.sagemaker": ("lamplighter.cli", "lamplighter.demo", "lamplighter.extension"),
}


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_no_upward_imports() -> None:
    wrong = []
    for name, tree in _modules().items():
        rules = [
            banned for layer, banned in FORBIDDEN.items() if name == layer or name.startswith(layer + ".")
        ]
        for imported in _imports(tree):
            for banned in (b for rule in rules for b in rule):
                if imported == banned or imported.startswith(banned + "."):
                    wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_policy_does_not_import_settings_at_run_time() -> None:
    tree = _modules()["lamplighter.policy"]
    runtime = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert "lamplighter.settings" not in runtime
