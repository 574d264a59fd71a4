"""The maximum-age override (jupyterhub-idle-culler's ``max_age``), table-driven with a fixed ``now``.

Past ``max_age`` interaction no longer keeps a server, but work still does: lamplighter never stops
running work, so such a server stops as soon as its work ends.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from lamplighter.model import Action, ActivityReading, Clock, Memory
from lamplighter.policy import decide
from tests.test_policy import NOW, ago, kernel, settings, snap


def test_without_max_age_nothing_changes() -> None:
    busy_long = snap(kernels=(kernel("idle", ago(minutes=1)),), started=ago(days=9))
    assert decide(busy_long, Memory(), settings(), NOW).action is Action.KEEP


def test_an_active_but_old_server_is_stopped_past_max_age() -> None:
    used = snap(kernels=(kernel("idle", ago(seconds=5)),), started=ago(hours=9))
    d = decide(used, Memory(), settings(max_age="8h"), NOW)
    assert d.action is Action.STOP
    assert d.reason.startswith("older than its maximum age (started 05:00:00 UTC, max_age 8h")
    assert d.stop_at == ago(hours=1)


def test_open_connections_do_not_keep_it_past_max_age() -> None:
    tabs = snap(kernels=(kernel("idle", ago(seconds=5), conns=2),), started=ago(hours=3))
    d = decide(tabs, Memory(), settings(max_age="2h", ignore_connections=False), NOW)
    assert d.action is Action.STOP
    assert any(r.startswith("not counted past max_age: 2 open connection(s)") for r in d.reasons)


@pytest.mark.parametrize(
    "work",
    [
        {"kernels": (kernel("busy", ago(hours=4)),)},
        {
            "readings": (
                ActivityReading(
                    source="processes", clock=Clock.WORK, at=NOW, detail="processes busy", active_now=True
                ),
            )
        },
    ],
    ids=["busy kernel", "busy processes"],
)
def test_running_work_keeps_a_server_past_max_age(work: dict[str, tuple[object, ...]]) -> None:
    d = decide(snap(started=ago(hours=9), **work), Memory(), settings(max_age="8h"), NOW)  # type: ignore[arg-type]
    assert d.action is Action.KEEP and d.reason.startswith("in use:")
    assert any("past its maximum age" in r and "stops when the work ends" in r for r in d.reasons)
    # Not a tight loop: the work is looked at again after busy_recheck, like any busy server.
    assert d.next_check_at == NOW + timedelta(seconds=30)


def test_once_the_work_ends_the_old_server_stops_at_once() -> None:
    memory = decide(snap(kernels=(kernel("busy"),), started=ago(hours=9)), Memory(), settings(), NOW).memory
    later = NOW + timedelta(seconds=30)
    done = snap(kernels=(kernel("idle", NOW),), started=ago(hours=9))
    d = decide(done, memory, settings(max_age="8h"), later)
    assert d.action is Action.STOP and "maximum age" in d.reason


def test_before_max_age_an_interacting_server_keeps_with_the_age_as_its_deadline_and_warning() -> None:
    used = snap(kernels=(kernel("idle", ago(seconds=5), conns=1),), started=ago(hours=7, minutes=50))
    d = decide(used, Memory(), settings(max_age="8h", ignore_connections=False, warn_before="15m"), NOW)
    assert d.action is Action.KEEP
    assert d.stop_at == NOW + timedelta(minutes=10)
    assert d.warn  # within warn_before of the age limit
    early = decide(used, Memory(), settings(max_age="8h", ignore_connections=False, warn_before="5m"), NOW)
    assert not early.warn and early.next_check_at <= NOW + timedelta(minutes=5)


def test_an_idle_server_stops_at_whichever_comes_first() -> None:
    idle = snap(kernels=(kernel("idle", ago(minutes=20)),), started=ago(hours=7, minutes=50))
    d = decide(idle, Memory(), settings(max_age="8h", probe_interval="2h"), NOW)
    assert d.action is Action.KEEP
    assert d.stop_at == NOW + timedelta(minutes=10)  # the age limit, before the idle deadline (+40 min)
    assert d.next_check_at == d.stop_at
    idle_first = decide(idle, Memory(), settings(max_age="9h", probe_interval="2h"), NOW)
    assert idle_first.stop_at == ago(minutes=20) + timedelta(hours=1)


def test_past_both_limits_the_idle_reason_is_kept() -> None:
    idle = snap(kernels=(kernel("idle", ago(hours=2)),), started=ago(hours=9))
    d = decide(idle, Memory(), settings(max_age="8h"), NOW)
    assert d.action is Action.STOP and d.reason.startswith("idle for 2h")
