"""The view commands: ``report`` (the journal summed up per target) and ``replay`` (a trace through three policies)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from lamplighter.cli.common import EXIT_OK, add_settings_options, settings_from_args
from lamplighter.cli.options import duration_flag
from lamplighter.errors import ConfigError

__all__ = ["add_report_parsers"]


def add_report_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="Hours up, in use, working, idle before a stop, stops, culls and hours saved, from the journal.",
        description="Sum the journal up per target. Saved: from each stop to the app's next start, capped "
        "(what it would have run had it been stopped only when somebody remembered).",
    )
    add_settings_options(report, names=("journal",))
    report.add_argument(
        "--since", metavar="WHEN", default="30d", help="From a duration ago (30d) or a time (ISO) [30d]."
    )
    report.add_argument(
        "--prices", metavar="FILE", type=Path, help="TOML price table (see deploy/prices-sagemaker.toml)."
    )
    report.add_argument(
        "--cap", metavar="DURATION", type=duration_flag("--cap"), default=12 * 3600.0,
        help="Longest time one stop is credited as saved [12h].",
    )  # fmt: skip
    form = report.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="Print JSON.")
    form.add_argument("--html", metavar="FILE", type=Path, help="Write a one-file HTML report with plots.")
    report.set_defaults(handler=_report)

    replay = commands.add_parser(
        "replay",
        help="Replay a fleet activity trace through the AWS script, the hub culler and lamplighter.",
        description="Replay TRACE (the format is in lamplighter.views.replay's docstring and the README) "
        "through three policies with the same idle timeout; print idle app-hours past the timeout, running "
        "jobs killed and stops of apps in use per policy.",
    )
    replay.add_argument("trace", metavar="TRACE", type=Path, help="The trace file (JSON Lines).")
    replay.add_argument(
        "--timeout", metavar="DURATION", type=duration_flag("--timeout"), default=3600.0,
        help="The idle timeout all three policies use [1h].",
    )  # fmt: skip
    replay.add_argument(
        "--prices",
        metavar="FILE",
        type=Path,
        help="TOML price table: money columns by each app's instance type.",
    )
    replay.add_argument("--json", action="store_true", help="Print JSON.")
    replay.set_defaults(handler=_replay)


def _report(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from lamplighter.cli.common import parse_since
    from lamplighter.journal import Journal
    from lamplighter.views.report import load_prices, summarise, to_html, to_json, to_text

    settings = settings_from_args(args)
    start = parse_since(args.since)
    prices = load_prices(args.prices) if args.prices else None
    end = datetime.now(timezone.utc)
    if not settings.journal.exists():
        print(f"lamplighter: no journal at {settings.journal} yet", file=sys.stderr)
        return EXIT_OK
    with Journal(settings.journal) as journal:
        events = journal.events(since=start, limit=10_000_000)
    reports = summarise(events, start=start, end=end, cap=timedelta(seconds=args.cap), prices=prices)
    currency = prices.currency if prices else None
    if args.json:
        print(to_json(reports, start=start, end=end))
    elif args.html:
        try:
            args.html.write_text(to_html(reports, start=start, end=end, currency=currency))
        except OSError as exc:
            raise ConfigError(f"--html: cannot write {args.html} ({exc.strerror})") from None
        print(f"wrote {args.html}")
    else:
        print(to_text(reports, currency=currency) if reports else "no events in the journal for that period")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    import json
    from datetime import timedelta

    from lamplighter.views.replay import format_table, load_trace, replay
    from lamplighter.views.report import load_prices

    prices = load_prices(args.prices) if args.prices else None
    trace = load_trace(args.trace)
    results = replay(trace, timedelta(seconds=args.timeout), per_hour=prices.per_hour if prices else None)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(f"{len(trace.apps)} apps over {trace.duration_s / 86400:.1f} days; timeout {args.timeout:g} s")
        print(format_table(results, currency=prices.currency if prices else None))
    return EXIT_OK
