"""Prometheus metrics scraped from a real ``lamplighter watch --metrics-port 0`` and a real in-server extension."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lamplighter.journal import Journal
from lamplighter.localserver import LocalServer
from lamplighter.views.metrics import Metrics
from tests.conftest import ServerFactory, watch
from tests.waiting import wait_until

_NO_SIGNALS = ("--no-process-signal", "--no-gpu-signal")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    hits = [v for (n, ls), v in parsed.items() if n == name and all((k, x) in ls for k, x in labels.items())]
    assert len(hits) == 1, f"{name} {labels}: {len(hits)} samples in {sorted(n for n, _ in parsed)}"
    return hits[0]


def test_watch_serves_metrics_on_a_free_port(jupyter: LocalServer, tmp_path: Path) -> None:
    log = tmp_path / "watch.log"
    env = {**os.environ, "LAMPLIGHTER_TOKEN": jupyter.token}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lamplighter", "watch", "--url", jupyter.url, "--idle-timeout", "10m",
             "--journal", str(tmp_path / "j.sqlite3"), "--metrics-port", "0", *_NO_SIGNALS],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        found = wait_until(
            lambda: re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", log.read_text()),
            timeout_s=30,
            what="the metrics URL in the watch log",
        )
        url = found.group(1)

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            parsed = samples(httpx.get(url, timeout=5).text)
            return parsed if any(n == "lamplighter_verdict" for n, _ in parsed) else None

        parsed = wait_until(scraped, timeout_s=20, what="a verdict in the scrape", ignore=(httpx.HTTPError,))
        target = jupyter.url.rstrip("/")
        keep = [
            v for (n, ls), v in parsed.items() if n == "lamplighter_verdict" and ("verdict", "keep") in ls
        ]
        assert keep == [1.0]
        until = value(parsed, "lamplighter_seconds_until_stop")
        assert 500 < until <= 600, until
        assert value(parsed, "lamplighter_busy_kernels") == 0
        assert 0 <= value(parsed, "lamplighter_idle_seconds") < 100
        assert value(parsed, "lamplighter_probes_total") >= 1
        assert any(target in dict(ls).get("target", "") for (n, ls) in parsed if n == "lamplighter_verdict")
        assert httpx.get(url.replace("/metrics", "/other"), timeout=5).status_code == 404
        assert jupyter.token not in httpx.get(url, timeout=5).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert jupyter.token not in log.read_text()


def test_stops_lag_and_hours_come_from_the_journal(jupyter: LocalServer, tmp_path: Path) -> None:
    journal_path = tmp_path / "j.sqlite3"
    assert watch(jupyter, "--idle-timeout", "2s", "--journal", str(journal_path), *_NO_SIGNALS) == 0
    with Journal(journal_path) as journal:
        parsed = samples(Metrics(journal).render().decode())
    assert value(parsed, "lamplighter_stops_total", outcome="stopped", reason="idle") == 1
    assert value(parsed, "lamplighter_decision_lag_seconds_count") == 1
    # The stop lands within a second of its deadline: the 1 s bucket holds it.
    assert value(parsed, "lamplighter_decision_lag_seconds_bucket", le="1.0") == 1
    assert value(parsed, "lamplighter_app_up_seconds_total") >= 2.0
    assert value(parsed, "lamplighter_app_saved_seconds_total") >= 0.0


def test_extension_serves_metrics_authenticated(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(
        extra_args=[
            '--ServerApp.jpserver_extensions={"lamplighter": True}',
            "--Lamplighter.idle_timeout=600",
            "--Lamplighter.process_signal=False",
            f"--Lamplighter.journal={tmp_path / 'ext.sqlite3'}",
        ]
    )
    url = server.url + "lamplighter/metrics"
    assert httpx.get(url, timeout=10).status_code == 403
    headers = {"Authorization": f"token {server.token}"}

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        answer = httpx.get(url, headers=headers, timeout=10)
        assert answer.status_code == 200
        parsed = samples(answer.text)
        return parsed if any(n == "lamplighter_verdict" for n, _ in parsed) else None

    parsed = wait_until(scraped, timeout_s=20, what="the in-server verdict in the scrape")
    assert value(parsed, "lamplighter_verdict", verdict="keep") == 1
    assert value(parsed, "lamplighter_probes_total", kind="in-process") >= 1
    assert 0 < value(parsed, "lamplighter_seconds_until_stop") <= 600


def test_the_grafana_dashboard_asks_only_for_metrics_we_serve(tmp_path: Path) -> None:
    import json
    from datetime import datetime, timedelta, timezone

    dashboard = json.loads(
        (Path(__file__).parent.parent / "deploy/grafana/lamplighter-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {m for e in exprs for m in re.findall(r"\blamplighter_[a-z_]+", e)}
    now = datetime.now(timezone.utc)
    with Journal(tmp_path / "j.sqlite3") as journal:
        # One of everything: a stop with its lag, a cull, a probe and a failure, a live verdict.
        journal.record("t", "agent", "watching", at=now - timedelta(hours=1))
        journal.record("t", "action", "stop stopped: gone", at=now, verdict="stopped", idle_since=now,
                       detail={"decided_after_s": 0.1})  # fmt: skip
        journal.record("t", "action", "shut down kernel k", at=now, verdict="done", detail={"cull": "kernel"})
        metrics = Metrics(journal)
        metrics.probes.labels("t", "k").inc()
        metrics.probe_failures.labels("t", "k", "ConnectFailed").inc()
        served = {
            s.name
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples
        }
    assert asked - served == {"lamplighter_verdict", "lamplighter_seconds_until_stop", "lamplighter_idle_seconds",
                              "lamplighter_busy_kernels", "lamplighter_work_busy"}  # fmt: skip
    assert len(exprs) >= 8
