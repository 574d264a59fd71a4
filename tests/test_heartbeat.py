"""The heartbeat format has one home: what the agent writes is what the fleet check reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lamplighter.errors import MalformedAnswer
from lamplighter.heartbeat import Heartbeat, write_heartbeat
from lamplighter.model import Action, Decision


def test_what_is_written_reads_back(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    decision = Decision(
        action=Action.KEEP,
        reason="idle for 5 min",
        reasons=("idle for 5 min",),
        next_check_at=now + timedelta(minutes=55),
        idle_since=now - timedelta(minutes=5),
        stop_at=now + timedelta(minutes=55),
    )
    path = tmp_path / "beat" / "heartbeat.json"
    write_heartbeat(path, "http://127.0.0.1:8888/", decision, now)
    beat = Heartbeat.parse_text(path.read_text())
    assert (beat.verdict, beat.reason, beat.updated_at) == ("keep", "idle for 5 min", now)
    assert (beat.idle_since, beat.stop_at) == (decision.idle_since, decision.stop_at)
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("text", ["not json", "[]", '{"version": 2, "verdict": "keep"}', '{"version": 1}'])
def test_anything_else_is_a_malformed_answer(text: str) -> None:
    with pytest.raises(MalformedAnswer):
        Heartbeat.parse_text(text)
