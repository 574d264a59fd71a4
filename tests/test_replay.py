"""The policy replay: known cases through the three policies, the trace format, the generator, the command."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lamplighter.errors import ConfigError
from lamplighter.views.replay import App, PolicyResult, Trace, load_trace, replay, write_trace
from lamplighter.views.synthetic import generate
from tests.conftest import cli

H = 3600.0
TIMEOUT = timedelta(minutes=30)
START = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _run(app: App, days: float = 1.0) -> dict[str, PolicyResult]:
    trace = Trace(START, days * 86400, (app,))
    return {r.policy: r for r in replay(trace, TIMEOUT)}


def _morning(*work: tuple[float, float, str], tabs: tuple[tuple[float, float], ...] = ()) -> App:
    """Somebody types 09:00-10:00, then leaves ``work`` running; they never stop the app themselves."""
    return App(
        "app",
        sessions=((9 * H, None),),
        interactions=tuple(9 * H + 60 * i for i in range(61)),
        work=tuple(work),
        tabs=tabs,
    )


@pytest.mark.parametrize(
    ("kind", "killed_by"),
    [
        # A cell that prints nothing: its kernel is busy (the AWS script sees that) but its last_activity
        # stands still (the hub's does too).
        ("silent", {"hub-culler"}),
        # A nohup job in a terminal: the kernel is idle and the terminal silent.
        ("nohup", {"aws-lcc", "hub-culler"}),
        ("gpu", {"aws-lcc", "hub-culler"}),
        # A cell that prints as it runs: everybody sees it.
        ("cell", set()),
    ],
)
def test_who_kills_a_three_hour_job(kind: str, killed_by: set[str]) -> None:
    results = _run(_morning((10 * H, 13 * H, kind)))
    assert {name for name, r in results.items() if r.jobs_killed} == killed_by
    assert results["lamplighter"].jobs_killed == 0
    assert results["lamplighter"].stops == 1
    # lamplighter stops at the deadline: no idle time past the timeout at all.
    assert results["lamplighter"].idle_hours_past_timeout == 0.0


def test_a_forgotten_tab_keeps_the_hub_culler_from_stopping() -> None:
    results = _run(_morning(tabs=((9 * H, 20 * H),)))
    hub, aws, ours = results["hub-culler"], results["aws-lcc"], results["lamplighter"]
    # The tab polls until 20:00: the hub sees activity until then and stops 30 min + up to a pass later.
    assert 9.0 <= hub.idle_hours_past_timeout <= 10.5
    assert 0 < aws.idle_hours_past_timeout <= 120 / H  # one cron interval at most
    assert ours.idle_hours_past_timeout == 0.0 and ours.stops == 1
    assert all(r.stops_in_use == 0 for r in results.values())


def test_the_users_own_stop_ends_the_spell() -> None:
    app = App("app", sessions=((9 * H, 9.5 * H),), interactions=(9 * H + 60,), work=())
    results = _run(app)
    assert all(
        r.stops == 0 and r.up_hours == 0.5 and r.idle_hours_past_timeout == 0 for r in results.values()
    )


def test_trace_round_trip_and_bad_traces(tmp_path: Path) -> None:
    trace = generate(apps=3, days=2, seed=7)
    path = tmp_path / "t.jsonl"
    write_trace(trace, path)
    again = load_trace(path)
    assert again.apps == trace.apps and again.duration_s == trace.duration_s
    assert again.generator["seed"] == 7
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        path.read_text().splitlines()[0]
        + '\n{"app": "x", "sessions": [[0, null]], "work": [[0, 5, "sleep"]]}\n'
    )
    with pytest.raises(ConfigError, match="line 2: work kind 'sleep'"):
        load_trace(bad)
    bad.write_text('{"format": "other"}\n')
    with pytest.raises(ConfigError, match="line 1"):
        load_trace(bad)


def test_the_generator_is_seeded() -> None:
    assert generate(apps=5, days=3, seed=3) == generate(apps=5, days=3, seed=3)
    assert generate(apps=5, days=3, seed=3).apps != generate(apps=5, days=3, seed=4).apps


def test_a_synthetic_fortnight_meets_the_targets() -> None:
    results = {r.policy: r for r in replay(generate(apps=12, days=14, seed=1), timedelta(hours=1))}
    ours = results["lamplighter"]
    assert ours.jobs_killed == 0
    for anchor in ("aws-lcc", "hub-culler"):
        assert results[anchor].jobs_killed > 0, anchor
        assert ours.idle_hours_past_timeout <= 0.01 * results[anchor].idle_hours_past_timeout, anchor


def test_replay_command(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_trace(generate(apps=2, days=2, seed=2), path)
    done = cli("replay", str(path), "--timeout", "30m", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["policy"] for r in json.loads(done.stdout)] == ["aws-lcc", "hub-culler", "lamplighter"]
    done = cli(
        "replay",
        str(path),
        "--prices",
        str(Path(__file__).parent.parent / "deploy" / "prices-sagemaker.toml"),
    )
    assert done.returncode == 0 and "| lamplighter |" in done.stdout and "cost up (USD)" in done.stdout
    missing = cli("replay", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
