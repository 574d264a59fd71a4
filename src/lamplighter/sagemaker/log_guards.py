"""Log filters that keep login credentials out of botocore's and httpcore's debug output.

A presigned URL and the cookies and redirects of its login are credentials. The libraries log them at
debug level; these filters blank them before any handler sees the record. Each guard is installed
when the code that could trigger such a log first runs, and installing twice is harmless.
"""

from __future__ import annotations

import logging
import re

__all__ = ["guard_botocore_logs", "guard_httpcore_logs"]


class _RedactPresignedUrls(logging.Filter):
    """Blanks botocore's debug copy of a response body that holds a presigned URL (a login credential)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "AuthorizedUrl" in record.getMessage():
            record.msg, record.args = "Response body: <redacted by lamplighter: holds a presigned URL>", ()
        return True


class _RedactHeaders(logging.Filter):
    """Blanks cookie and redirect headers in httpcore's debug trace (a login redirect carries tokens)."""

    _HEADER = re.compile(
        r"""\((b['"](?:set-cookie|cookie|location)['"]), (?:b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")\)""",
        re.IGNORECASE,
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._HEADER.sub(r"(\1, b'<redacted>')", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _add_filter(name: str, kind: type[logging.Filter]) -> None:
    log = logging.getLogger(name)
    if not any(isinstance(f, kind) for f in log.filters):
        log.addFilter(kind())


def guard_botocore_logs() -> None:
    """botocore.parsers logs every response body at debug level, CreatePresignedDomainUrl's included."""
    _add_filter("botocore.parsers", _RedactPresignedUrls)


def guard_httpcore_logs() -> None:
    """httpcore's debug trace prints response headers: Set-Cookie, and Location with a login token."""
    for name in ("httpcore.http11", "httpcore.http2"):
        _add_filter(name, _RedactHeaders)
