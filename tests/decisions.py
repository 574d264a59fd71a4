"""A stop decision, for the tests that drive a stopper directly (the policy's own tests build theirs)."""

from __future__ import annotations

from datetime import datetime, timezone

from lamplighter.model import Action, Decision

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
STOP = Decision(
    action=Action.STOP,
    reason="idle for 1h",
    reasons=("idle for 1h",),
    idle_since=AT,
    stop_at=AT,
    next_check_at=AT,
)
