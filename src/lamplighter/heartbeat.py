"""The heartbeat file: what a running agent says about itself, written by the agent, read by the fleet check.

Format version 1, one JSON object: ``version``, ``target``, ``pid``, ``updated_at`` and the decision's
own JSON form (:meth:`lamplighter.model.Decision.to_dict`: ``verdict``, ``reason``, ``idle_since``,
``stop_at``...). It is redacted before it is written, and replaced atomically so a reader never sees half.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lamplighter.errors import MalformedAnswer
from lamplighter.model import Decision, parse_timestamp
from lamplighter.redaction import redact_data

__all__ = ["DEFAULT_HEARTBEAT_PATH", "FORMAT_VERSION", "Heartbeat", "heartbeat_record", "write_heartbeat"]

FORMAT_VERSION = 1
DEFAULT_HEARTBEAT_PATH = ".lamplighter/heartbeat.json"  # relative to the Jupyter root, the user's home
_VERDICTS = ("keep", "stop", "skip")


def heartbeat_record(
    target: str, decision: Decision, now: datetime, *, pid: int | None = None
) -> dict[str, Any]:
    """The heartbeat's JSON object for ``decision``, redacted."""
    record = {
        "version": FORMAT_VERSION,
        "target": target,
        "pid": os.getpid() if pid is None else pid,
        "updated_at": now.isoformat(),
        **decision.to_dict(),
    }
    redacted: dict[str, Any] = redact_data(record)
    return redacted


def write_heartbeat(path: Path, target: str, decision: Decision, now: datetime) -> None:
    """Replace the heartbeat at ``path`` atomically; raises ``OSError`` (the agent logs it and goes on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(heartbeat_record(target, decision, now), indent=1))
    os.replace(tmp, path)


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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedAnswer(f"the heartbeat file is not readable: {exc}") from None

    @classmethod
    def parse_text(cls, text: str) -> Heartbeat:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise MalformedAnswer("the heartbeat file is not JSON") from None
        return cls.parse(data)
