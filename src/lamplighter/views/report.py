"""The journal summed up per target: hours up, in use, working, idle before a stop, stops, culls, hours saved.

The journal holds a row each time a verdict changed, so the time between two rows of a target has the
verdict of the first. An app is up from its agent's ``watching`` row (or its first row) until a stop
that succeeded; each decision row opens a stretch that lasts until the next row of that target:

- *in use*: a KEEP without a deadline (somebody interacts, or work runs);
- *working*: the in-use stretches whose leading reason is the work clock's (a busy or starting kernel,
  a busy process tree or GPU: the policy lists work first);
- *idle before a stop*: from the ``idle_since`` a successful stop row carries to that stop.

An agent that exits on request (``exiting on request``) ends the up time it can vouch for; the next
row of that target begins a new one.

*Saved* is measured against "stopped only when the user remembered": from each stop to the app's next
start (the next row of that target), or to the report's end, capped at ``cap`` (default 12 h: the
night a forgotten app would have run). Money is hours × the target's price per hour (:func:`load_prices`).
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from lamplighter.errors import ConfigError
from lamplighter.journal import JournalEvent

__all__ = [
    "DEFAULT_CAP",
    "Prices",
    "TargetReport",
    "load_prices",
    "stop_reason",
    "summarise",
    "to_html",
    "to_json",
    "to_text",
]

DEFAULT_CAP = timedelta(hours=12)

# The leading reason of an in-use verdict names the work clock's evidence with these words: a kernel
# "busy since" / "starting since", a process tree or GPU that "used 97 % ... over the last 30 s".
_WORK_WORDS = (" busy since ", " starting since ", " used ")


def stop_reason(event: JournalEvent) -> str:
    """``idle`` for a stop past an idle deadline, ``unreachable`` for one after an outage (no idle_since)."""
    return "idle" if event.idle_since is not None else "unreachable"


def _is_stop(event: JournalEvent) -> bool:
    return event.kind == "action" and "cull" not in event.detail and event.summary.startswith("stop ")


@dataclass
class TargetReport:
    """One target's figures, in seconds (``hours`` gives them in hours for printing)."""

    target: str
    up_s: float = 0.0
    in_use_s: float = 0.0
    working_s: float = 0.0
    idle_before_stop_s: float = 0.0
    saved_s: float = 0.0
    stops: dict[str, int] = field(default_factory=dict)  # by outcome
    culls: dict[str, int] = field(default_factory=dict)  # by kind
    decision_lags_s: list[float] = field(default_factory=list)
    instance_type: str | None = None
    price_per_hour: float | None = None

    def hours(self) -> dict[str, float]:
        return {
            "up": self.up_s / 3600,
            "in_use": self.in_use_s / 3600,
            "working": self.working_s / 3600,
            "idle_before_stop": self.idle_before_stop_s / 3600,
            "saved": self.saved_s / 3600,
        }

    def money(self) -> dict[str, float] | None:
        if self.price_per_hour is None:
            return None
        hours = self.hours()
        return {"up": hours["up"] * self.price_per_hour, "saved": hours["saved"] * self.price_per_hour}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hours"] = self.hours()
        data["money"] = self.money()
        return data


@dataclass(frozen=True)
class Prices:
    """Price per hour by instance type, and which instance type each target runs on."""

    per_hour: Mapping[str, float]
    targets: Mapping[str, str] = field(default_factory=dict)
    default_type: str | None = None
    currency: str = "USD"

    def for_target(self, target: str) -> tuple[str | None, float | None]:
        kind = self.targets.get(target, self.default_type)
        return kind, (self.per_hour.get(kind) if kind is not None else None)


def load_prices(path: Path) -> Prices:
    """Read a price file (TOML, see ``deploy/prices-sagemaker.toml``); a bad one is a ConfigError (exit 2)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--prices: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--prices: {path} is not TOML ({exc})") from None
    table = data.get("per_hour")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"--prices: {path} has no [per_hour] table of instance type = price")
    try:
        per_hour = {str(k): float(v) for k, v in table.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"--prices: {path}: every [per_hour] value must be a number") from None
    targets = data.get("targets", {})
    if not isinstance(targets, dict):
        raise ConfigError(f"--prices: {path}: [targets] must map a target to an instance type")
    default = data.get("default_instance_type")
    return Prices(
        per_hour=per_hour,
        targets={str(k): str(v) for k, v in targets.items()},
        default_type=str(default) if default else None,
        currency=str(data.get("currency", "USD")),
    )


def _working(event: JournalEvent) -> bool:
    return any(word in event.summary for word in _WORK_WORDS)


def summarise(
    events: Iterable[JournalEvent],
    *,
    start: datetime | None,
    end: datetime,
    cap: timedelta = DEFAULT_CAP,
    prices: Prices | None = None,
) -> list[TargetReport]:
    """Per target figures from ``events`` (read since ``start``) up to ``end``."""
    by_target: dict[str, list[JournalEvent]] = {}
    for event in events:
        if event.kind in ("decision", "action", "agent"):
            by_target.setdefault(event.target, []).append(event)
    reports = [_one_target(target, rows, end, cap) for target, rows in sorted(by_target.items())]
    if prices is not None:
        for report in reports:
            report.instance_type, report.price_per_hour = prices.for_target(report.target)
    return reports


def _one_target(target: str, rows: Sequence[JournalEvent], end: datetime, cap: timedelta) -> TargetReport:
    report = TargetReport(target)
    up_since: datetime | None = None
    stretch: JournalEvent | None = None  # the decision whose verdict holds now
    stopped_at: datetime | None = None
    rows = sorted(rows, key=lambda e: (e.at, e.id))
    for event in rows:
        at = event.at
        if stopped_at is not None and not _is_stop(event):
            # The next row after a stop is the app's next start: the time in between was saved.
            report.saved_s += min((at - stopped_at).total_seconds(), cap.total_seconds())
            stopped_at = None
        if up_since is None and not _is_stop(event) and not event.summary.startswith("exiting"):
            up_since = at
        if stretch is not None:
            _count_stretch(report, stretch, at)
            stretch = None
        if event.kind == "agent" and event.summary.startswith("exiting"):
            # The agent left (SIGTERM, Ctrl-C): what the app did after is not known, so not counted.
            if up_since is not None:
                report.up_s += (at - up_since).total_seconds()
                up_since = None
        elif event.kind == "decision":
            stretch = event
        elif event.kind == "action" and "cull" in event.detail:
            kind = str(event.detail["cull"])
            report.culls[f"{kind} {event.verdict}"] = report.culls.get(f"{kind} {event.verdict}", 0) + 1
        elif _is_stop(event):
            outcome = event.verdict or "unknown"
            report.stops[outcome] = report.stops.get(outcome, 0) + 1
            lag = event.detail.get("decided_after_s")
            if isinstance(lag, int | float):
                report.decision_lags_s.append(float(lag))
            if outcome == "stopped" and event.idle_since is not None:
                # The stop row carries the idle spell's start: it began before the idle verdict's row.
                report.idle_before_stop_s += max(0.0, (at - event.idle_since).total_seconds())
            if outcome == "stopped" and up_since is not None:
                report.up_s += (at - up_since).total_seconds()
                up_since = None
                stopped_at = at
    if stretch is not None:
        _count_stretch(report, stretch, end)
    if up_since is not None:
        report.up_s += max(0.0, (end - up_since).total_seconds())
    if stopped_at is not None:
        report.saved_s += min(max(0.0, (end - stopped_at).total_seconds()), cap.total_seconds())
    return report


def _count_stretch(report: TargetReport, decision: JournalEvent, until: datetime) -> None:
    if decision.verdict == "keep" and decision.stop_at is None:
        seconds = max(0.0, (until - decision.at).total_seconds())
        report.in_use_s += seconds
        if _working(decision):
            report.working_s += seconds


def to_json(reports: Sequence[TargetReport], *, start: datetime | None, end: datetime) -> str:
    return json.dumps(
        {
            "start": start.isoformat() if start else None,
            "end": end.isoformat(),
            "targets": [r.to_dict() for r in reports],
            "total_hours": {
                key: sum(r.hours()[key] for r in reports)
                for key in ("up", "in_use", "working", "idle_before_stop", "saved")
            },
        },
        indent=2,
    )


# -- printing ------------------------------------------------------------------------------------

_COLUMNS = (
    ("up", "up h"),
    ("in_use", "in use h"),
    ("working", "working h"),
    ("idle_before_stop", "idle→stop h"),
    ("saved", "saved h"),
)


def to_text(reports: Sequence[TargetReport], *, currency: str | None = None) -> str:
    """One line per target, then the totals; money columns when prices were given."""
    width = max([len("target"), *(len(r.target) for r in reports)])
    money = currency is not None
    head = (
        f"{'target':<{width}}"
        + "".join(f" {title:>11}" for _, title in _COLUMNS)
        + f" {'stops':>6} {'culls':>6}"
    )
    if money:
        head += f" {'cost ' + str(currency):>10} {'saved ' + str(currency):>10}"
    lines = [head]
    for r in reports:
        hours = r.hours()
        line = f"{r.target:<{width}}" + "".join(f" {hours[key]:>11.2f}" for key, _ in _COLUMNS)
        line += f" {sum(r.stops.values()):>6} {sum(r.culls.values()):>6}"
        if money:
            cash = r.money()
            line += f" {cash['up']:>10.2f} {cash['saved']:>10.2f}" if cash else f" {'?':>10} {'?':>10}"
        lines.append(line)
    if len(reports) > 1:
        total = f"{'total':<{width}}" + "".join(
            f" {sum(r.hours()[key] for r in reports):>11.2f}" for key, _ in _COLUMNS
        )
        total += f" {sum(sum(r.stops.values()) for r in reports):>6} {sum(sum(r.culls.values()) for r in reports):>6}"
        if money:
            priced = [m for m in (r.money() for r in reports) if m is not None]
            total += f" {sum(m['up'] for m in priced):>10.2f} {sum(m['saved'] for m in priced):>10.2f}"
        lines.append(total)
    return "\n".join(lines)


def _bars_svg(report: TargetReport, scale_h: float) -> str:
    """Five horizontal bars (up, in use, working, idle before stop, saved), one shared scale."""
    colours = ("#4c78a8", "#59a14f", "#9c755f", "#e15759", "#f28e2b")
    rows = []
    for i, ((key, title), colour) in enumerate(zip(_COLUMNS, colours, strict=True)):
        hours = report.hours()[key]
        width = 0 if scale_h <= 0 else 360 * hours / scale_h
        y = 6 + i * 22
        rows.append(
            f'<text x="0" y="{y + 13}" font-size="12">{html.escape(title)}</text>'
            f'<rect x="90" y="{y}" width="{width:.1f}" height="16" fill="{colour}"/>'
            f'<text x="{96 + width:.1f}" y="{y + 13}" font-size="12">{hours:.2f}</text>'
        )
    return f'<svg width="520" height="{12 + 22 * len(_COLUMNS)}" role="img">{"".join(rows)}</svg>'


def to_html(
    reports: Sequence[TargetReport], *, start: datetime | None, end: datetime, currency: str | None
) -> str:
    """One self-contained HTML file: the table and an inline SVG bar chart per target (no scripts, no links)."""
    scale = max([0.0, *(max(r.hours().values()) for r in reports)])
    period = (
        f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC" if start else f"up to {end:%Y-%m-%d %H:%M} UTC"
    )
    sections = "".join(
        f"<h2>{html.escape(r.target)}</h2>{_bars_svg(r, scale)}"
        f"<p>stops: {html.escape(_counts(r.stops))}; culls: {html.escape(_counts(r.culls))}</p>"
        for r in reports
    )
    table = html.escape(to_text(reports, currency=currency))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lamplighter report</title>'
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}pre{background:#f6f8fa;padding:1em}"
        "</style></head><body>"
        f"<h1>lamplighter report</h1><p>{html.escape(period)}</p><pre>{table}</pre>{sections}"
        "<p>Saved: from each stop to the app's next start, capped (what a forgotten app would have run).</p>"
        "</body></html>\n"
    )


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"
