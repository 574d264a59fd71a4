"""``lamplighter report``: figures from a journal written by a real watch, and by the real Journal at set times."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from lamplighter.views.report import load_prices, summarise, to_html
from tests.conftest import cli, watch

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)


def _day_in_the_journal(path: Path) -> None:
    """Two up spells of one target: busy 1 h, idle 1 h, stopped; restarted 8 h later, idle, stopped, never back."""
    target = "http://app/"
    with Journal(path) as j:
        j.record(target, "agent", "watching with in-server shutdown", at=T0)
        j.record(
            target, "decision", "in use: kernel 3f2a (python3) busy since 09:00:00 UTC", at=T0, verdict="keep"
        )
        j.record(target, "decision", "idle for 0s since 10:00:00 UTC", at=T0 + H, verdict="keep",
                 idle_since=T0 + H, stop_at=T0 + 2 * H)  # fmt: skip
        j.record(target, "action", "stop stopped: the server is shutting down", at=T0 + 2 * H, verdict="stopped",
                 idle_since=T0 + H, stop_at=T0 + 2 * H, detail={"decided_after_s": 0.2})  # fmt: skip
        j.record(target, "action", "shut down kernel 3f2a", at=T0 + 90 * timedelta(minutes=1), verdict="done",
                 detail={"cull": "kernel"})  # fmt: skip
        j.record(target, "agent", "watching with in-server shutdown", at=T0 + 10 * H)
        j.record(
            target, "decision", "in use: 1 open connection(s) to the server", at=T0 + 10 * H, verdict="keep"
        )
        j.record(target, "decision", "idle for 0s since 11:00", at=T0 + 11 * H, verdict="keep",
                 idle_since=T0 + 11 * H, stop_at=T0 + 12 * H)  # fmt: skip
        j.record(target, "action", "stop stopped: gone", at=T0 + 12 * H, verdict="stopped",
                 idle_since=T0 + 11 * H, stop_at=T0 + 12 * H, detail={"decided_after_s": 0.4})  # fmt: skip


def test_figures_per_target(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    _day_in_the_journal(path)
    with Journal(path) as j:
        (report,) = summarise(j.events(limit=100), start=None, end=T0 + 40 * H)
    hours = report.hours()
    assert hours["up"] == 4.0  # 09-11 and 19-21
    assert hours["in_use"] == 2.0
    assert hours["working"] == 1.0  # the busy kernel, not the open connection
    assert hours["idle_before_stop"] == 2.0
    # 8 h until the restart, then the cap (12 h) for a stop the app never came back from.
    assert hours["saved"] == 20.0
    assert report.stops == {"stopped": 2}
    assert report.culls == {"kernel done": 1}
    assert report.decision_lags_s == [0.2, 0.4]


def test_prices_turn_hours_into_money(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    _day_in_the_journal(path)
    prices = tmp_path / "p.toml"
    prices.write_text('default_instance_type = "ml.g5.xlarge"\n[per_hour]\n"ml.g5.xlarge" = 1.5\n')
    with Journal(path) as j:
        (report,) = summarise(j.events(limit=100), start=None, end=T0 + 40 * H, prices=load_prices(prices))
    assert report.money() == {"up": 6.0, "saved": 30.0}
    page = to_html([report], start=None, end=T0 + 40 * H, currency="USD")
    assert page.count("<svg") == 1 and "http://app/" in page and "<script" not in page


def test_sample_price_file_loads() -> None:
    prices = load_prices(Path(__file__).parent.parent / "deploy" / "prices-sagemaker.toml")
    assert prices.per_hour["ml.t3.medium"] > 0 and prices.default_type == "ml.t3.medium"


def test_report_of_a_real_watch(jupyter: LocalServer, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    assert watch(jupyter, "--idle-timeout", "2s", "--journal", str(journal), "--no-process-signal") == 0
    done = cli("report", "--journal", str(journal), "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    (target,) = body["targets"]
    assert target["stops"] == {"stopped": 1}
    assert target["up_s"] >= 2.0 and target["idle_before_stop_s"] >= 2.0
    assert target["decision_lags_s"][0] < 1.0
    html_path = tmp_path / "r.html"
    done = cli("report", "--journal", str(journal), "--html", str(html_path))
    assert done.returncode == 0 and "<svg" in html_path.read_text()
    text = cli("report", "--journal", str(journal))
    assert text.returncode == 0 and jupyter.url.rstrip("/") in text.stdout


def test_bad_price_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("per_hour = 3\n")
    _day_in_the_journal(tmp_path / "j.sqlite3")
    done = cli("report", "--journal", str(tmp_path / "j.sqlite3"), "--prices", str(bad))
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0 and "per_hour" in done.stderr and "Traceback" not in done.stderr
    )
    done = cli("report", "--journal", str(tmp_path / "j.sqlite3"), "--since", "yesterday-ish")
    assert done.returncode == 2 and "--since" in done.stderr
