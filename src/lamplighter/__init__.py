"""lamplighter: keeps notebook environments lit only while somebody is using them.

The stable Python API is what ``__all__`` lists: the settings, the pure decision and its types, and
the error tree. Everything else is importable but may change between releases.
"""

from __future__ import annotations

from lamplighter.errors import (
    AuthRejected,
    CellFailed,
    ConfigError,
    ConnectFailed,
    JournalError,
    KernelDied,
    LamplighterError,
    MalformedAnswer,
    NotFound,
    PlatformError,
    RemoteError,
    RemoteTimeout,
    SageMakerCallFailed,
    Unsupported,
)
from lamplighter.model import Action, Decision, Memory, ServerSnapshot
from lamplighter.policy import decide
from lamplighter.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
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


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Lets ``jupyter server extension enable lamplighter`` find the in-server mode."""
    return [{"module": "lamplighter.extension"}]
