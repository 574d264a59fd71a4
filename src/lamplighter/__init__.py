"""lamplighter: keeps notebook environments lit only while somebody is using them.

The stable Python API is what ``__all__`` lists: the settings, the pure decision and its types, and
the error tree. Everything else is importable but may change between releases.
"""

from __future__ import annotations

from lamplighter.errors import (
    AuthRejected,
    CellFailed,
    CommandFailed,
    ConfigError,
    ConnectFailed,
    JournalError,
    KernelDied,
    LamplighterError,
    MalformedAnswer,
    PlatformError,
    RemoteError,
    RemoteTimeout,
    StopFailed,
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
    "CommandFailed",
    "ConfigError",
    "ConnectFailed",
    "Decision",
    "JournalError",
    "KernelDied",
    "LamplighterError",
    "MalformedAnswer",
    "Memory",
    "PlatformError",
    "RemoteError",
    "RemoteTimeout",
    "ServerSnapshot",
    "Settings",
    "StopFailed",
    "Unsupported",
    "__version__",
    "decide",
    "load_settings",
]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Lets ``jupyter server extension enable lamplighter`` find the in-server mode."""
    return [{"module": "lamplighter.extension"}]
