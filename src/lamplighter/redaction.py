"""The one redaction rule: what counts as a secret, and how it is hidden in everything lamplighter writes.

A secret is hidden two ways, and every output (log lines at every level, ours and httpx's, httpcore's,
websockets' and botocore's; the journal; the heartbeat; ``status --json``; error lines and tracebacks;
``--help`` and usage errors; hook environments) goes through both:

- **by value**: every credential lamplighter is given (the token, each cookie, a password or signed
  parameter lifted from a URL) is registered with :func:`hide` where it enters, and replaced by
  ``***`` wherever it shows up later, whatever the surrounding text;
- **by shape**: what a credential looks like on the wire, even one we were never told about (a
  ``Set-Cookie`` from the server, a presigned URL's ``authToken``, an AWS signature):
  ``Authorization:``/``Cookie:``/``Set-Cookie:``/``X-XSRFToken:`` headers (as lines, or inside a
  dict or tuple repr), user info in a URL (``//user:pw@``), and the query parameters in
  :data:`CREDENTIAL_PARAMS`.

Hooks (``--command``, ``--warn-command``) inherit the environment minus :data:`SECRET_VARIABLES`, and
minus any variable whose value holds a registered secret.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "CREDENTIAL_PARAMS",
    "MASK",
    "SECRET_VARIABLES",
    "RedactingFilter",
    "guard_handlers",
    "hidden_scope",
    "hide",
    "redact",
    "redact_data",
    "without_secrets",
]

MASK = "***"

# Shorter values would mask ordinary words ("abc" in every line); such a weak token is still hidden
# by shape in headers and URLs, just not by value everywhere.
_MIN_HIDDEN_LEN = 4

#: Query parameters that carry a credential: Jupyter's, SageMaker's presigned login, common API-key
#: names, and AWS SigV4 query signing. Compared case-insensitively.
CREDENTIAL_PARAMS = frozenset(
    {
        "token",
        "authtoken",
        "auth_token",
        "access_token",
        "id_token",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
    }
)

#: Variables a hook never inherits: lamplighter's secret settings (token, cookies) and the server or
#: hub tokens a Jupyter environment carries. AWS credentials are kept on purpose: a stop hook that
#: calls AWS (``aws sagemaker delete-app``) acts with the identity the agent runs as, and they are
#: not credentials of the watched server.
SECRET_VARIABLES = frozenset(
    {
        "LAMPLIGHTER_TOKEN",
        "JUPYTER_TOKEN",
        "LAMPLIGHTER_COOKIES",
        "LAMPLIGHTER_HUB_TOKEN",
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
    }
)

_HEADERS = r"authorization|proxy-authorization|cookie|set-cookie|x-xsrftoken|x-amz-security-token"
# A header as repr'd inside a dict or tuple: 'Authorization': 'token x', (b'Cookie', b'a=b').
_HEADER_REPR = re.compile(rf"(?i)\b({_HEADERS})(['\"]\s*[:,]\s*b?)(['\"])(.*?)(?<!\\)\3")
# A header as a line: "> Authorization: token x" (websockets' debug log), "Cookie: a=b".
_HEADER_LINE = re.compile(rf"(?im)\b({_HEADERS})(\s*:[ \t]*)(?![ \t]*(?:b?['\"]|\*\*\*))([^\r\n]+)")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@?#]+@")
_PARAM = re.compile(
    r"(?i)((?<![\w-])(?:" + "|".join(re.escape(p) for p in sorted(CREDENTIAL_PARAMS)) + r")=)[^&\s\"',;#]+"
)

_lock = threading.Lock()
_hidden: frozenset[str] = frozenset()
_by_value: re.Pattern[str] | None = None


def hide(*values: str | None) -> None:
    """Register credentials to be masked by value in every output from now on (process-wide)."""
    global _hidden, _by_value
    fresh = {v for v in values if v and len(v) >= _MIN_HIDDEN_LEN} - _hidden
    if not fresh:
        return
    with _lock:
        _hidden = _hidden | fresh
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(_hidden, key=len, reverse=True)
        _by_value = re.compile("|".join(re.escape(v) for v in ordered))


@contextlib.contextmanager
def hidden_scope() -> Iterator[None]:
    """Credentials registered inside are forgotten after it. The registry is process-wide, so tests,
    which share one process, would otherwise mask each other's output."""
    global _hidden, _by_value
    saved = _hidden, _by_value
    try:
        yield
    finally:
        with _lock:
            _hidden, _by_value = saved


def hidden_values() -> frozenset[str]:
    """The registered credentials (for tests and :func:`without_secrets`)."""
    return _hidden


def redact(text: str) -> str:
    """``text`` with every registered credential and everything shaped like one replaced by ``***``."""
    pattern = _by_value
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _HEADER_REPR.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{MASK}{m[3]}", text)
    text = _HEADER_LINE.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
    text = _USERINFO.sub(lambda m: f"{m[1]}{MASK}@", text)
    return _PARAM.sub(lambda m: f"{m[1]}{MASK}", text)


def redact_data(value: Any) -> Any:
    """:func:`redact` applied to every string inside nested dicts, lists and tuples (keys included).

    For JSON documents: masking the serialised text could swallow the quotes and commas after a header.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


def without_secrets(env: Mapping[str, str], *, also: Iterable[str] = ()) -> dict[str, str]:
    """``env`` minus :data:`SECRET_VARIABLES` (and ``also``), and minus any value holding a secret."""
    drop = SECRET_VARIABLES | set(also)
    hidden = _hidden
    return {
        name: value
        for name, value in env.items()
        if name not in drop and not any(secret in value for secret in hidden)
    }


class RedactingFilter(logging.Filter):
    """A handler filter that applies :func:`redact` to the message, the traceback and the stack.

    It sits on the handler, not on a logger, so it sees the libraries' records too (logger filters
    are not inherited by child loggers).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def guard_handlers(handlers: Iterable[logging.Handler]) -> None:
    """Put a :class:`RedactingFilter` on each handler, once: for logs whose handlers somebody else set up
    (the Jupyter server's in-server mode, the Lambda runtime's)."""
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
