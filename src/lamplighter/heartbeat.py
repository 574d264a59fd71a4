"""The heartbeat file: what a running agent says about itself, written by the agent, read by the fleet check.

Format version 1, one JSON object: ``version``, ``target``, ``pid``, ``updated_at``, ``interval_s`` (how
often this agent rewrites it: a reader judges staleness by it, not by its own setting; older agents left
it out) and the decision's own JSON form (:meth:`lamplighter.model.Decision.to_dict`: ``verdict``,
``reason``, ``idle_since``, ``stop_at``...). It is redacted before it is written, and replaced atomically
so a reader never sees half.

The same record is also logged as one line, :data:`LOG_MARKER` followed by the JSON, for apps whose
Jupyter API cannot be read from outside (Code Editor): SageMaker ships the app's log to CloudWatch, where
the fleet check finds the line (:func:`heartbeat_from_log_line`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lamplighter.errors import MalformedAnswer
from lamplighter.model import Decision, parse_timestamp
from lamplighter.redaction import redact_data

__all__ = [
    "DEFAULT_HEARTBEAT_PATH",
    "FORMAT_VERSION",
    "LOG_MARKER",
    "Heartbeat",
    "heartbeat_from_log_line",
    "heartbeat_log_line",
    "heartbeat_record",
    "write_heartbeat",
]

FORMAT_VERSION = 1
DEFAULT_HEARTBEAT_PATH = ".lamplighter/heartbeat.json"  # relative to the Jupyter root, the user's home
_VERDICTS = ("keep", "stop", "skip")
#: What starts the heartbeat's JSON in a log line (a CloudWatch filter pattern term as it is).
LOG_MARKER = "lamplighter-heartbeat"


def heartbeat_record(
    target: str,
    decision: Decision,
    now: datetime,
    *,
    pid: int | None = None,
    interval: timedelta | None = None,
) -> dict[str, Any]:
    """The heartbeat's JSON object for ``decision``, redacted."""
    record = {
        "version": FORMAT_VERSION,
        "target": target,
        "pid": os.getpid() if pid is None else pid,
        "updated_at": now.isoformat(),
        **({"interval_s": interval.total_seconds()} if interval is not None else {}),
        **decision.to_dict(),
    }
    redacted: dict[str, Any] = redact_data(record)
    return redacted


def write_heartbeat(
    path: Path, target: str, decision: Decision, now: datetime, *, interval: timedelta | None = None
) -> None:
    """Replace the heartbeat at ``path`` atomically; raises ``OSError`` (the agent logs it and goes on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(heartbeat_record(target, decision, now, interval=interval), indent=1))
    os.replace(tmp, path)


def heartbeat_log_line(target: str, decision: Decision, now: datetime, *, interval: timedelta) -> str:
    """The heartbeat as one log line: :data:`LOG_MARKER`, a space, the compact JSON (redacted)."""
    record = heartbeat_record(target, decision, now, interval=interval)
    return f"{LOG_MARKER} {json.dumps(record, separators=(',', ':'))}"


def heartbeat_from_log_line(line: str) -> Heartbeat | None:
    """The heartbeat in a log line (whatever the logger put before the marker), or ``None``."""
    _, marker, rest = line.partition(LOG_MARKER + " ")
    if not marker:
        return None
    try:
        return Heartbeat.parse_text(rest.strip())
    except MalformedAnswer:
        return None


@dataclass(frozen=True)
class Heartbeat:
    """What the agent inside an app last wrote about itself."""

    target: str
    pid: int
    updated_at: datetime
    verdict: str  # keep | stop | skip
    idle_since: datetime | None
    stop_at: datetime | None
    reason: str
    interval: timedelta | None = None  # how often the agent rewrites it (None: an older agent)

    def stale(self, now: datetime, fallback_interval: timedelta) -> bool:
        """Older than three of the agent's own intervals (``fallback_interval`` when it did not say)."""
        return now - self.updated_at > 3 * (self.interval or fallback_interval)

    @classmethod
    def parse(cls, data: Any) -> Heartbeat:
        """Read the heartbeat JSON; raises ``MalformedAnswer`` when it is not a version-1 heartbeat."""
        try:
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a version {FORMAT_VERSION} heartbeat")
            verdict = str(data["verdict"])
            if verdict not in _VERDICTS:
                raise ValueError(f"unknown verdict {verdict!r}")
            return cls(
                target=str(data.get("target") or ""),
                pid=int(data.get("pid") or 0),
                updated_at=parse_timestamp(data["updated_at"]),
                verdict=verdict,
                idle_since=parse_timestamp(data["idle_since"]) if data.get("idle_since") else None,
                stop_at=parse_timestamp(data["stop_at"]) if data.get("stop_at") else None,
                reason=str(data.get("reason") or ""),
                interval=_interval(data.get("interval_s")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedAnswer(f"the heartbeat file is not readable: {exc}") from None

    @classmethod
    def parse_text(cls, text: str) -> Heartbeat:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # nested past the decoder's limit: a hostile line
            raise MalformedAnswer("the heartbeat file is not JSON") from None
        return cls.parse(data)


def _interval(raw: Any) -> timedelta | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 86400:
        raise ValueError(f"interval_s: not a number of seconds: {raw!r}")
    return timedelta(seconds=float(raw))
