"""The core commands: ``watch``, ``status``, ``journal`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone

from lamplighter.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REMOTE,
    add_settings_options,
    error_line,
    parse_since,
    settings_from_args,
    start_logging,
)
from lamplighter.cli.options import add_option
from lamplighter.errors import ConfigError
from lamplighter.journal import Journal, JournalEvent
from lamplighter.model import Action, Decision, Memory, StopOutcome, format_time
from lamplighter.settings import Settings, parse_duration, parse_setting

__all__ = ["add_core_parsers"]

_TARGET_GROUPS = ("target", "policy", "signals", "action", "journal", "sagemaker")
#: A hub user's server is stopped through the hub (the rest of the hub group is `lamplighter hub`'s).
_HUB_NAMES = ("hub_url", "hub_token", "remove_named_servers")


def add_core_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = commands.add_parser(
        "watch",
        help="Watch a server and stop it once nobody has used it for the idle timeout.",
        description="Watch a Jupyter server without creating activity; stop it within a second of its "
        "idle deadline; journal every verdict with its reasons.",
    )
    add_settings_options(watch, groups=(*_TARGET_GROUPS, "views"), names=_HUB_NAMES)
    watch.add_argument("--once", action="store_true", help="Decide once, act, and exit (for cron).")
    watch.set_defaults(handler=_watch)

    status = commands.add_parser("status", help="Print the verdict and its reasons now; act on nothing.")
    add_settings_options(status, groups=_TARGET_GROUPS)
    add_option(status, "json")
    add_settings_options(status, groups=("hub",))
    status.add_argument(
        "--hub",
        action="store_true",
        help="Every server of the hub (--hub-url, JUPYTERHUB_API_TOKEN) instead.",
    )
    status.set_defaults(handler=_status)

    journal = commands.add_parser("journal", help="Print the journal of decisions and actions.")
    add_settings_options(journal, names=("journal",))
    add_option(journal, "json", help="Print JSON, one event a line.")
    journal.add_argument(
        "--since", metavar="WHEN", help="Only events newer than a duration ago (2h) or a time (ISO)."
    )
    journal.add_argument("--target", metavar="URL", help="Only events of this target.")
    journal.add_argument(
        "--limit", type=int, default=200, help="At most this many events, newest kept [200]."
    )
    journal.set_defaults(handler=_journal)

    snooze = commands.add_parser(
        "snooze",
        help="Keep the app up for a while (writes the keep-alive file the agent reads).",
        description="Keep the app up until now + DURATION whatever the idle clock says; 'off' ends a snooze.",
    )
    snooze.add_argument("duration", metavar="DURATION", help="How long: 90m, 2h, ... or 'off'.")
    add_settings_options(snooze, names=("keep_alive_file", "journal", "url"))
    snooze.set_defaults(handler=_snooze)

    demo = commands.add_parser(
        "demo", help="Start a throwaway Jupyter server, use it, and watch it go idle and stop."
    )
    add_settings_options(demo, defaults={"idle_timeout": "8s"})
    demo.set_defaults(handler=_demo)


# -- watch --------------------------------------------------------------------------------------


def _watch(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    start_logging(args, settings.log_level)
    return asyncio.run(_watch_async(settings, once=args.once))


async def _watch_async(settings: Settings, *, once: bool) -> int:
    from lamplighter.agent import Agent, exit_on_signals
    from lamplighter.wiring import companion_running, open_target

    async with open_target(settings) as target, contextlib.AsyncExitStack() as views:
        with Journal(settings.journal) as journal:
            probe, signals, on_decision = target.probe, target.signals, None
            if settings.metrics_port is not None:
                from lamplighter.views.metrics import Metrics, serve_metrics

                metrics = Metrics(journal)
                probe, signals, on_decision = metrics.instrument(probe, signals)
                await views.enter_async_context(
                    serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
                )
            stopper = target.stopper
            if settings.native_guard:
                on_decision = _with_native_guard(settings, journal, probe.target, on_decision)
                if settings.action == "none" and not settings.dry_run:
                    from lamplighter.sagemaker.native_guard import NativeHandOff

                    stopper = NativeHandOff(target.probe, keep_terminals=settings.keep_terminals)
            agent = Agent(
                settings,
                probe,
                stopper,
                journal,
                signals=signals,
                notifier=target.notifier,
                on_decision=on_decision,
            )
            with exit_on_signals(agent.request_exit):
                async with companion_running(target.companion, journal, once=once):
                    result = await agent.run(once=once)
    if result.stop is not None and result.stop.outcome is StopOutcome.FAILED:
        return EXIT_FAILED
    if once and result.stop is None and result.decision.memory.failing_since is not None:
        # The one probe failed: journaled as "cannot tell", but cron must not read that as healthy.
        print(
            error_line(f"watch --once could not read the server: {result.decision.reason}"), file=sys.stderr
        )
        return EXIT_REMOTE
    return EXIT_OK


def _with_native_guard(
    settings: Settings, journal: Journal, target: str, then: Callable[[Decision], None] | None
) -> Callable[[Decision], None]:
    """``on_decision`` that also feeds SageMaker's native idle clock (``--native-guard``)."""
    from lamplighter.sagemaker.native_guard import NativeGuard
    from lamplighter.wiring import row_for

    if row_for(settings)[1].app_type == "code-editor":
        # Its probe reads the same file as interaction: the guard's writes would keep the app up.
        raise ConfigError("native_guard: Jupyter apps only (Code Editor's native shutdown counts processes)")
    guard = NativeGuard(settings.native_idle_file, since=journal.load_memory(target).last_work)

    def on_decision(decision: Decision) -> None:
        guard.feed(decision)
        if then is not None:
            then(decision)

    return on_decision


# -- status -------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, dry_run=True)
    start_logging(args, "warning")
    if args.hub:
        from lamplighter.cli.hub import hub_status

        return hub_status(settings, as_json=args.json)
    decision = asyncio.run(_status_async(settings))
    if decision.action is Action.SKIP:
        # The probe failed: one line naming why, as for every connect or auth failure.
        print(error_line(decision.reasons[0]), file=sys.stderr)
        return EXIT_REMOTE
    if args.json:
        print(json.dumps({**decision.to_dict(), "settings": settings.redacted()}, indent=2))
    else:
        print(f"{decision.action.value.upper()}: {decision.reason}")
        if decision.idle_since:
            print(f"  idle since   {format_time(decision.idle_since)}")
        if decision.stop_at:
            print(f"  stop at      {format_time(decision.stop_at)}")
        print(f"  next check   {format_time(decision.next_check_at)}")
        for line in decision.reasons[1:]:
            print(f"  - {line}")
    return EXIT_OK


async def _status_async(settings: Settings) -> Decision:
    """The watching agent's verdict, taken the agent's way (every signal, the snooze, its memory)."""
    from lamplighter.agent import Agent, utcnow
    from lamplighter.stoppers import NoStop
    from lamplighter.wiring import open_target

    async with open_target(settings) as target:
        with Journal.in_memory() as scratch:
            # The agent's memory, if a journal exists; status never creates one, nor writes to it.
            scratch.save_memory(target.probe.target, _read_memory(settings, target.probe.target), at=utcnow())
            agent = Agent(settings, target.probe, NoStop(), scratch, signals=target.signals)
            return await agent.settle()


def _read_memory(settings: Settings, target: str) -> Memory:
    """The watching agent's memory, if a journal exists; status never creates one."""
    if not settings.journal.exists():
        return Memory()
    with Journal(settings.journal) as journal:
        return journal.load_memory(target)


# -- journal ------------------------------------------------------------------------------------


def _journal(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    since = parse_since(args.since) if args.since else None
    if not settings.journal.exists():
        print(f"lamplighter: no journal at {settings.journal} yet", file=sys.stderr)
        return EXIT_OK
    with Journal(settings.journal) as journal:
        events = journal.events(since=since, target=args.target, limit=max(1, args.limit))
    for event in events:
        print(json.dumps(event.to_dict()) if args.json else format_event(event))
    return EXIT_OK


def format_event(event: JournalEvent) -> str:
    when = event.at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    verdict = (event.verdict or "").ljust(8)
    return f"{when}  {event.kind:<8} {verdict} {event.summary}"


# -- snooze -------------------------------------------------------------------------------------


def _snooze(args: argparse.Namespace) -> int:
    from lamplighter.signals.keepalive import write_snooze

    settings = settings_from_args(args)
    now = datetime.now(timezone.utc)
    if args.duration.strip().lower() in ("off", "0", "none"):
        until, summary = None, "snooze ended"
    else:
        try:
            until = now + parse_duration(args.duration)
        except ValueError:
            raise ConfigError(f"duration: expected 90m, 2h, ... or 'off', got {args.duration!r}") from None
        summary = f"snoozed until {format_time(until)}"
    try:
        write_snooze(settings.keep_alive_file, until)
    except OSError as exc:
        raise ConfigError(
            f"keep_alive_file: cannot write {settings.keep_alive_file} ({exc.strerror})"
        ) from None
    target = settings.url or f"keep-alive:{settings.keep_alive_file}"
    with Journal(settings.journal) as journal:
        journal.record(target, "snooze", summary, at=now, stop_at=until)
    print(f"{summary} ({settings.keep_alive_file})")
    return EXIT_OK


# -- demo ---------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from lamplighter.demo import run_demo

    idle = parse_setting("idle_timeout", args.idle_timeout, "--idle-timeout")
    return EXIT_OK if run_demo(idle) else EXIT_FAILED
