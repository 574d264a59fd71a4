"""The report's JSON form, who may report, freshness, and the look before a stop: no hub needed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from lamplighter.hub.reporter import Reporter
from lamplighter.hub.reports import (
    BadReport,
    LookBeforeStop,
    ReportBook,
    ReportedProbe,
    may_report,
    parse_report,
)
from lamplighter.hub.service import HubService, ServiceHooks, _Request
from lamplighter.model import (
    Action,
    ActivityReading,
    Clock,
    Decision,
    KernelInfo,
    ServerSnapshot,
    TerminalInfo,
)
from lamplighter.platforms.jupyterhub import HubServer
from lamplighter.settings import load_settings
from lamplighter.views.metrics import Metrics

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def snapshot(*, started: datetime = T0, busy: bool = False) -> ServerSnapshot:
    return ServerSnapshot(
        target="http://127.0.0.1:1/user/a/",
        started=started,
        last_activity=started + timedelta(minutes=1),
        connections=1,
        kernels=(
            KernelInfo(
                "k1", "python3", "busy" if busy else "idle", started + timedelta(minutes=2), 1, "a.ipynb"
            ),
        ),
        terminals=(TerminalInfo("1", started + timedelta(minutes=3)),),
        readings=(
            ActivityReading(
                "processes", Clock.WORK, None, "train.py at 97 %", active_now=True, ready_at=started
            ),
            ActivityReading(
                "snooze", Clock.INTERACTION, started, "snoozed", hold_until=started + timedelta(hours=1)
            ),
        ),
    )


def decision() -> Decision:
    return Decision(
        action=Action.KEEP,
        reason="in use",
        reasons=("in use",),
        idle_since=None,
        stop_at=None,
        next_check_at=T0,
    )


def body(**changes: Any) -> bytes:
    reporter = Reporter("http://127.0.0.1:9/", "t", HubServer("a", "", "/user/a/", None, None), interval_s=2)
    reporter.snapshot = snapshot()
    reporter.decided(decision())
    data = reporter.body()
    assert data is not None
    data.update(changes)
    return json.dumps(data).encode()


def test_a_report_round_trips_the_extensions_snapshot_and_readings() -> None:
    report = parse_report(body(), received=10.0, seq=1)
    assert report.key == ("a", "") and report.interval_s == 2
    assert report.snapshot == ServerSnapshot(**{**snapshot().__dict__, "target": ""})
    # The signals' readings of the same check (the GPU, seen only inside) travel with the snapshot's own.
    reporter = Reporter("http://127.0.0.1:9/", "t", HubServer("a", "", "/user/a/", None, None), interval_s=2)
    reporter.snapshot = snapshot()
    reporter.readings["gpu"] = ActivityReading("gpu", Clock.WORK, None, "GPU 0 at 88 %", active_now=True)
    reporter.decided(decision())
    sent = parse_report(json.dumps(reporter.body()).encode(), received=0.0, seq=2)
    assert sent.snapshot.readings == (*snapshot().readings, reporter.readings["gpu"])
    assert report.decision["verdict"] == "keep"
    assert report.fresh_until == 10.0 + 2 * 2 + 1


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (body(user=""), "user and server_name"),
        (body(interval_s=True), "interval_s"),
        (body(interval_s=0), "interval_s"),
        (body(decision=None), "decision"),
        (body(snapshot={"started": "yesterday"}), "started"),
        (
            body(snapshot={"started": T0.isoformat(), "last_activity": T0.isoformat(), "kernels": {}}),
            "kernels",
        ),
        (
            body(
                snapshot={
                    "started": T0.isoformat(),
                    "last_activity": T0.isoformat(),
                    "readings": [{"source": "x", "clock": "sideways", "detail": ""}],
                }
            ),
            "snapshot",
        ),
    ],
)
def test_a_body_that_is_not_a_report_is_refused_naming_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(BadReport, match=says):
        parse_report(raw, received=0.0, seq=1)


@pytest.mark.parametrize(
    ("owner", "user", "server", "refused"),
    [
        ({"kind": "user", "name": "a", "scopes": ["access:servers!user=a"]}, "a", "gpu", None),
        ({"kind": "user", "name": "a", "scopes": ["access:servers!server=a/"]}, "a", "", None),
        ({"kind": "user", "name": "a", "scopes": ["access:servers!server=a/"]}, "a", "gpu", "another server"),
        ({"kind": "user", "name": "b", "scopes": []}, "a", "", "not a's"),
        ({"kind": "service", "name": "a", "scopes": []}, "a", "", "service"),
    ],
)
def test_only_the_servers_own_user_may_report_for_it(
    owner: dict[str, Any], user: str, server: str, refused: str | None
) -> None:
    reason = may_report(owner, user, server)
    assert (reason is None) == (refused is None)
    if refused is not None:
        assert reason is not None and refused in reason


class Direct:
    """A stand-in for the direct probe: counts its probes."""

    def __init__(self, snap: ServerSnapshot) -> None:
        self.snap = snap
        self.calls = 0

    @property
    def target(self) -> str:
        return "t"

    async def snapshot(self) -> ServerSnapshot:
        self.calls += 1
        return self.snap

    async def cull_kernel(self, kernel_id: str) -> None: ...

    async def cull_terminal(self, name: str) -> None: ...


async def test_a_fresh_report_replaces_the_probe_and_a_stale_or_earlier_runs_does_not() -> None:
    now = [100.0]
    book = ReportBook(clock=lambda: now[0])
    direct = Direct(snapshot())
    probe = ReportedProbe(direct, book, ("a", ""), target="t", started=T0)
    woken: list[str] = []
    book.listen(("a", ""), lambda: woken.append("x"))
    book.add(parse_report(body(), received=now[0], seq=book.next_seq()))
    assert woken == ["x"]
    assert (await probe.snapshot()).target == "t" and direct.calls == 0
    now[0] += 2 * 2 + 1 - 0.01
    await probe.snapshot()
    assert direct.calls == 0 and probe.reported == 2
    now[0] += 0.02  # past twice the interval plus a second
    await probe.snapshot()
    assert direct.calls == 1 and probe.last is None
    # A report from the server's earlier run (started before the hub started this one) is not this run's.
    later = ReportedProbe(direct, book, ("a", ""), target="t", started=T0 + timedelta(minutes=5))
    book.add(parse_report(body(), received=now[0], seq=book.next_seq()))
    await later.snapshot()
    assert direct.calls == 2


async def test_the_look_before_a_stop_keeps_a_busy_server_until_a_newer_report() -> None:
    book = ReportBook(clock=lambda: 0.0)
    direct = Direct(snapshot(busy=True))
    probe = ReportedProbe(direct, book, ("a", ""), target="t", started=None)
    look = LookBeforeStop(probe)
    book.add(parse_report(body(), received=0.0, seq=book.next_seq()))
    await look.refresh()
    assert direct.calls == 0  # nothing to look again at: the last snapshot was probed
    await probe.snapshot()
    await look.refresh()
    reading = look.reading(T0)
    assert direct.calls == 1 and reading.active_now and reading.clock is Clock.WORK
    assert "busy when the service looked before the stop" in reading.detail
    book.add(parse_report(body(), received=0.0, seq=book.next_seq()))
    await probe.snapshot()
    assert not look.reading(T0).active_now and look.reading(T0).at is None  # superseded


class Owners:
    def __init__(self) -> None:
        self.lookups = 0

    async def owner(self, token: str) -> dict[str, Any] | None:
        self.lookups += 1
        return {"kind": "user", "name": "a", "scopes": []} if token == "a-token" else None


async def test_the_endpoint_answers_only_under_its_prefix_and_only_its_methods() -> None:
    settings = load_settings({"service_url": "http://127.0.0.1:0", "service_prefix": "/services/ll"}, env={})
    hooks = ServiceHooks(ReportBook(), Metrics())
    service = HubService(settings, hooks, Owners(), own_token="own")  # type: ignore[arg-type]
    assert service.prefix == "/services/ll/"

    async def status(method: str, path: str, token: str | None = None, data: bytes = b"") -> int:
        headers = {"authorization": f"token {token}"} if token else {}
        return (await service.route(_Request(method, path, headers, data))).status

    assert await status("GET", "/elsewhere") == 404
    assert await status("GET", "/services/ll/api/report") == 405
    assert await status("POST", "/services/ll/metrics", "own") == 405
    assert await status("GET", "/services/ll/metrics", "a-token") == 403
    assert await status("GET", "/services/ll/metrics", "own") == 200
    assert await status("POST", "/services/ll/api/report", "a-token", body()) == 202
    assert await status("POST", "/services/ll/api/report", "a-token", b"nope") == 400
    assert hooks.book.received == 1


async def test_reports_from_an_unwatched_server_ask_for_a_list_less_and_less_often() -> None:
    now = [0.0]
    book = ReportBook(clock=lambda: now[0])
    asked: list[float] = []
    book.on_unknown = lambda key: asked.append(now[0])
    for t in (0.0, 0.5, 1.0, 2.0, 2.9, 3.0, 6.9, 7.0):
        now[0] = t
        book.add(parse_report(body(), received=t, seq=book.next_seq()))
    assert asked == [0.0, 1.0, 3.0, 7.0]  # after 1 s, 2 s, 4 s
    book.listen(("a", ""), lambda: None)  # watched now: its reports wake its agent instead
    book.forget(("a", ""))
    now[0] = 7.1
    book.add(parse_report(body(), received=7.1, seq=book.next_seq()))
    assert asked[-1] == 7.1  # gone and back: asked at once again
