"""The in-server views: ``{base}lamplighter/`` (the status page), its snooze form, and ``{base}lamplighter/metrics``.

Server-rendered HTML from ``static/status.html`` (``string.Template``, every value escaped) with a
little JavaScript: the countdown runs in the browser and the verdict is re-read from
``lamplighter/api/status`` every 3 s. The snooze buttons POST a form carrying ``_xsrf``; the server's
own XSRF check refuses a POST without it. Every handler sets ``_track_activity = False``: looking at
the page is not using the app (a forgotten tab must not keep it up).
"""

from __future__ import annotations

import html
from collections import deque
from datetime import datetime, timedelta, timezone
from importlib import resources
from string import Template
from typing import Any, Protocol

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from lamplighter.model import format_duration, format_time
from lamplighter.views.metrics import CONTENT_TYPE, Metrics

__all__ = ["MetricsHandler", "PageHandler", "SnoozeHandler", "Sparkline", "sparkline_svg"]

_SNOOZE_HOURS = (0, 1, 4)


class StatusSource(Protocol):
    """What the page reads of the in-server agent (``lamplighter.extension.InServerAgent``)."""

    def status(self) -> dict[str, Any]: ...
    def snooze(self, until: datetime | None) -> None: ...


class Sparkline:
    """The work seen at each of the last ``size`` checks (busy kernels + busy work signals)."""

    def __init__(self, size: int = 60) -> None:
        self.samples: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self.samples.append(value)


def sparkline_svg(samples: list[float], *, width: int = 300, height: int = 40) -> str:
    """An inline SVG polyline of ``samples`` (empty: a flat line), scaled to the largest value."""
    if len(samples) < 2:  # a polyline needs two points to show
        samples = [samples[0] if samples else 0.0] * 2
    top = max(max(samples), 1.0)
    step = width / max(len(samples) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(samples)
    )
    return (
        f'<svg id="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="work at each check"><rect width="{width}" height="{height}" fill="#f6f8fa"/>'
        f'<polyline fill="none" stroke="#1a7f37" '
        f'stroke-width="2" points="{points}"/></svg>'
    )


def render_page(status: dict[str, Any], samples: list[float], *, xsrf: str, base: str, now: datetime) -> str:
    template = Template(resources.files("lamplighter.views").joinpath("static/status.html").read_text())
    verdict = str(status.get("verdict") or "none")
    stop_at = status.get("stop_at")
    countdown, stop_text = "in use", ""
    if stop_at:
        at = datetime.fromisoformat(stop_at)
        countdown = format_duration(at - now)
        stop_text = f"until the stop at {format_time(at, now)}"
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in status.get("reasons") or ())
    values = {
        "verdict": verdict,
        "verdict_upper": verdict.upper(),
        "reason": status.get("reason") or "",
        "stop_at": stop_at or "",
        "countdown": countdown,
        "stop_at_text": stop_text,
        "reasons": reasons,
        "checks": status.get("checks", 0),
        "stopper": status.get("stopper", ""),
        "samples": len(samples),
        "xsrf": xsrf,
        "snooze_url": f"{base}lamplighter/snooze",
        "status_url": f"{base}lamplighter/api/status",
        "metrics_url": f"{base}lamplighter/metrics",
    }
    escaped = {k: v if k == "reasons" else html.escape(str(v), quote=True) for k, v in values.items()}
    escaped["sparkline"] = sparkline_svg(samples)
    return template.substitute(escaped)


class PageHandler(JupyterHandler):
    """``GET {base}lamplighter/``: the status page."""

    _track_activity = False

    def initialize(self, source: StatusSource, sparkline: Sparkline) -> None:
        self._source = source
        self._sparkline = sparkline

    @web.authenticated
    def get(self) -> None:
        page = render_page(
            self._source.status(),
            list(self._sparkline.samples),
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else str(self.xsrf_token),
            base=self.base_url,
            now=datetime.now(timezone.utc),
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(page)


class SnoozeHandler(JupyterHandler):
    """``POST {base}lamplighter/snooze`` with ``hours`` = 1, 4 or 0 (end the snooze); XSRF-checked."""

    _track_activity = False

    def initialize(self, source: StatusSource) -> None:
        self._source = source

    @web.authenticated
    def post(self) -> None:
        try:
            hours = int(self.get_body_argument("hours"))
        except (web.MissingArgumentError, ValueError):
            raise web.HTTPError(400, "hours: expected 0, 1 or 4") from None
        if hours not in _SNOOZE_HOURS:
            raise web.HTTPError(400, "hours: expected 0, 1 or 4")
        until = datetime.now(timezone.utc) + timedelta(hours=hours) if hours else None
        self._source.snooze(until)
        self.redirect(f"{self.base_url}lamplighter/")


class MetricsHandler(JupyterHandler):
    """``GET {base}lamplighter/metrics``: authenticated exactly as the server's own ``/metrics``."""

    _track_activity = False

    def initialize(self, metrics: Metrics) -> None:
        self._metrics = metrics

    @allow_unauthenticated
    def get(self) -> None:
        # jupyter_server's PrometheusMetricsHandler rule: a login unless authenticate_prometheus is off.
        if self.settings.get("authenticate_prometheus", True) and not self.logged_in:
            raise web.HTTPError(403)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self._metrics.render())
