"""The keep-alive file: touching it counts as activity, and ``lamplighter snooze`` writes a keep-until time.

Any job can keep its app up with ``touch ~/.lamplighter/keep-alive`` in its loop; a person can run
``lamplighter snooze 2h``. The file is read (one ``stat``, and a short read when it changed) at each
check, so there is nothing to sample in the background.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

from lamplighter.model import ActivityReading, Clock, format_time, parse_timestamp

__all__ = ["KeepAliveFile", "write_snooze"]

_MAX_READ = 200


class KeepAliveFile:
    """Reads the keep-alive file: its mtime on the interaction clock, its keep-until time as a hold."""

    name = "keep-alive"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def run(self) -> None:
        await asyncio.Event().wait()  # read on demand in reading(); nothing to sample

    async def refresh(self) -> None:
        """Nothing to sample: read on demand in reading()."""

    def reading(self, now: datetime) -> ActivityReading:
        try:
            stat = self.path.stat()
            text = self.path.read_text(errors="replace")[:_MAX_READ].strip()
        except OSError:
            return ActivityReading(self.name, Clock.INTERACTION, None, f"no keep-alive file at {self.path}")
        touched = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
        hold = _keep_until(text)
        if hold is not None and hold > now:
            return ActivityReading(
                self.name,
                Clock.INTERACTION,
                touched,
                f"snoozed until {format_time(hold)} ({self.path})",
                hold_until=hold,
            )
        return ActivityReading(
            self.name,
            Clock.INTERACTION,
            touched,
            f"keep-alive file {self.path} touched at {format_time(touched)}",
        )


def _keep_until(text: str) -> datetime | None:
    try:
        return parse_timestamp(text.split()[0]) if text else None
    except ValueError:
        return None


def write_snooze(path: Path, until: datetime | None) -> None:
    """Write a keep-until time (or remove the file for ``None``)."""
    if until is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(until.astimezone(timezone.utc).isoformat() + "\n")
