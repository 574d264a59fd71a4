"""``lamplighter demo``: a throwaway Jupyter server, used, left idle, watched, and stopped on time.

It shows the three promises in under a minute: a cell running longer than the idle timeout keeps the
app up, watching creates no activity, and the stop lands within a second of the deadline; then it
prints the journal. Needs the ``demo`` extra (installed by ``make demo``).
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from lamplighter.agent import Agent
from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.model import Action, Decision, format_duration
from lamplighter.remote.connection import connection_from_settings
from lamplighter.remote.kernels import start_kernel
from lamplighter.remote.session import KernelSession
from lamplighter.settings import load_settings
from lamplighter.wiring import open_target

__all__ = ["run_demo"]


def run_demo(idle_timeout: timedelta) -> bool:
    """Run the demo; True when the server was stopped as expected (the CLI turns that into the exit status)."""
    console = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="lamplighter-demo-") as tmp:
        workdir = Path(tmp)
        console.print("[bold]1.[/] Starting a throwaway Jupyter server on 127.0.0.1 ...")
        server = start_local_server(workdir / "server")
        try:
            console.print(f"   running at {server.url} (pid {server.process.pid})")
            return asyncio.run(_demo(server, workdir, idle_timeout, console))
        finally:
            server.stop()


async def _demo(server: LocalServer, workdir: Path, idle_timeout: timedelta, console: Console) -> bool:
    journal_path = workdir / "journal.sqlite3"
    settings = load_settings(
        {
            "url": server.url,
            "token": server.token,
            "idle_timeout": idle_timeout,
            "busy_recheck": "1s",
            "journal": str(journal_path),
            "keep_alive_file": str(workdir / "keep-alive"),
        },
        env={},
    )
    long_cell_s = idle_timeout.total_seconds() + 4
    async with open_target(settings) as target, connection_from_settings(settings) as conn:
        kernel_id = await start_kernel(conn, "python3")
        with Journal(journal_path) as journal:
            view = _LiveView(settings.idle_timeout)
            agent = Agent(settings, target.probe, target.stopper, journal, on_decision=view.update)
            async with KernelSession(conn, kernel_id) as session:
                result = await session.execute(
                    "print('hello from a kernel on the demo server')", timeout_s=60
                )
                text = "".join(str(o.get("text", "")) for o in result.outputs).strip()
                console.print(f"[bold]2.[/] Ran a cell: [green]{text}[/]")
                console.print(
                    f"[bold]3.[/] Running a cell that sleeps {long_cell_s:.0f} s, longer than the "
                    f"{format_duration(idle_timeout)} idle timeout, and watching: the app must stay up ..."
                )
                long_cell = asyncio.create_task(session.execute(f"import time; time.sleep({long_cell_s})"))
                with Live(view.render(), console=console, refresh_per_second=8) as live:
                    refresher = asyncio.create_task(_refresh(live, view))
                    watch = asyncio.create_task(agent.run())
                    await long_cell
                _end_live(console)
            # The session is closed: from here on nobody uses the server.
            console.print("   the long cell finished; nobody is using the server now")
            with Live(view.render(), console=console, refresh_per_second=8) as live:
                refresher.cancel()
                refresher = asyncio.create_task(_refresh(live, view))
                result_watch = await watch
                refresher.cancel()
                live.update(view.render())
            _end_live(console)
            events = journal.events()
    console.print("[bold]4.[/] The journal (lamplighter journal):")
    for event in events:
        console.print(f"   {event.at:%H:%M:%S}  {event.kind:<8} {event.verdict or '':<8} {event.summary}")
    if not result_watch.stopped or server.wait_exited(10) is None:
        console.print("[red]The server was not stopped.[/]")
        return False
    action = events[-1].detail if events else {}
    acted, gone = action.get("decided_after_s"), action.get("overshoot_s")
    if isinstance(acted, float) and isinstance(gone, float):
        console.print(
            f"[bold green]Stopped.[/] lamplighter acted {acted * 1000:.0f} ms after the deadline; the server "
            f"finished shutting down {gone * 1000:.0f} ms after it. {agent.probes} probes in all."
        )
    return True


def _end_live(console: Console) -> None:
    if not console.is_terminal:
        console.line()  # a non-terminal Live leaves its last frame without a newline


class _LiveView:
    """The countdown and reasons shown while the agent watches."""

    def __init__(self, idle_timeout: timedelta) -> None:
        self.decision: Decision | None = None
        self.idle_timeout = idle_timeout

    def update(self, decision: Decision) -> None:
        self.decision = decision

    def render(self) -> Group:
        decision = self.decision
        if decision is None:
            return Group(Text("   waiting for the first probe ..."))
        now = datetime.now(timezone.utc)
        if decision.action is Action.STOP:
            head = Text(f"   STOP: {decision.reason}", style="bold red")
        elif decision.idle_since is None:
            head = Text(f"   KEEP: {decision.reason}", style="bold green")
        else:
            left = (decision.stop_at - now).total_seconds() if decision.stop_at else 0.0
            head = Text(f"   idle: stops in {max(left, 0):4.1f} s — {decision.reason}", style="bold yellow")
        lines = [head] + [Text(f"     · {line}", style="dim") for line in decision.reasons[1:4]]
        return Group(*lines)


async def _refresh(live: Live, view: _LiveView) -> None:
    while True:
        live.update(view.render())
        await asyncio.sleep(0.1)
