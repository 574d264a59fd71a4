"""The one error tree of lamplighter.

Every failure a user can cause or meet is one of these; the CLI turns each into a single line and
an exit status, with no traceback unless ``--debug``::

    LamplighterError
    ├── ConfigError            a setting, flag, file, URL or argument is wrong,    (exit 2)
    │                          or the journal cannot be opened
    ├── RemoteError            talking to a Jupyter server went wrong               (exit 3)
    │   ├── ConnectFailed      nothing answered at the URL
    │   ├── NotFound           the server answered 404: wrong base URL, or the kernel/terminal is gone
    │   ├── AuthRejected       the server refused our token or cookies
    │   ├── RemoteTimeout      a named time budget ran out
    │   ├── MalformedAnswer    the server answered something we cannot read
    │   ├── KernelDied         the kernel died or restarted under a run
    │   └── CellFailed         a notebook cell raised
    ├── PlatformError          the platform could not do what we asked
    │   ├── SageMakerCallFailed  a SageMaker API call failed (AWS error code)
    │   └── Unsupported        the platform cannot do this at all
    └── JournalError           the open journal fails while reading or writing     (exit 1)

A :class:`RemoteError` carries the request's ``method`` and ``url`` (the display URL: no token, no
query) when it came from one request.

Messages never contain tokens, cookies or presigned URLs: callers pass display URLs only, and the
CLI prints every message through :func:`lamplighter.redaction.redact` as a second guard.
"""

from __future__ import annotations

__all__ = [
    "AuthRejected",
    "CellFailed",
    "ConfigError",
    "ConnectFailed",
    "JournalError",
    "KernelDied",
    "LamplighterError",
    "MalformedAnswer",
    "NotFound",
    "PlatformError",
    "RemoteError",
    "RemoteTimeout",
    "SageMakerCallFailed",
    "Unsupported",
]


class LamplighterError(Exception):
    """Base of every error lamplighter raises on purpose."""


class ConfigError(LamplighterError):
    """Raised when a setting, flag, config file or command argument is invalid."""


class RemoteError(LamplighterError):
    """Raised when a request to a Jupyter server fails.

    ``status`` is the HTTP status if there was one; ``method`` and ``url`` name the request (the URL
    as displayed: without token, cookies or query) when one request failed.
    """

    def __init__(
        self, message: str, *, status: int | None = None, method: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.url = url


class ConnectFailed(RemoteError):
    """Raised when nothing answers at the server's URL (refused, DNS, TLS handshake)."""


class NotFound(RemoteError):
    """Raised when the server answers 404: the base URL is wrong, or the kernel or terminal is gone."""

    def __init__(
        self, message: str, *, status: int | None = 404, method: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(message, status=status, method=method, url=url)


class AuthRejected(RemoteError):
    """Raised when the server answers 401/403: the token or cookies are wrong or lack permission."""


class RemoteTimeout(RemoteError):
    """Raised when a named budget (connect, request, kernel start, cell, whole run) runs out."""


class MalformedAnswer(RemoteError):
    """Raised when the server answers with something that is not the documented shape."""


class KernelDied(RemoteError):
    """Raised when the kernel running our code dies or is restarted under us.

    ``restarted`` is True when someone restarted a live kernel (its process was replaced on request),
    False when the kernel process died (the server may have started a fresh one since).
    """

    def __init__(self, message: str, *, restarted: bool = False) -> None:
        super().__init__(message)
        self.restarted = restarted


class CellFailed(RemoteError):
    """Raised when a notebook cell raises; carries the kernel's error and the cell's index."""

    def __init__(
        self, message: str, *, ename: str, evalue: str, traceback: list[str], cell_index: int
    ) -> None:
        super().__init__(message)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.cell_index = cell_index


class PlatformError(LamplighterError):
    """Raised when a platform (Jupyter, JupyterHub, SageMaker) cannot carry out an action."""


class SageMakerCallFailed(PlatformError):
    """Raised when a SageMaker API call fails; ``code`` is AWS's error code (``ResourceNotFound``...)."""

    def __init__(self, message: str, *, operation: str, code: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.code = code


class Unsupported(PlatformError):
    """Raised when a platform has no way to do what was asked (for example culling a kernel on Code Editor)."""


class JournalError(LamplighterError):
    """Raised when the open SQLite journal cannot be read or written (one that cannot be opened is a ConfigError)."""
