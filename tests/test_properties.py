"""Property tests: the parsers at lamplighter's borders, fed arbitrary input, and the policy's promises.

Each parser raises only its documented error (the lamplighter tree, or ``ValueError`` where that is
the contract) and never echoes a secret it was handed. The policy, fed arbitrary snapshots and
memories, never stops while work runs or cannot be told yet, and never schedules into the past.
"""

from __future__ import annotations

import math
import string
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lamplighter.errors import ConfigError, MalformedAnswer
from lamplighter.model import (
    EARLIEST,
    LATEST,
    Action,
    ActivityReading,
    Clock,
    KernelInfo,
    Memory,
    Observation,
    ProbeFailure,
    ServerSnapshot,
    TerminalInfo,
    format_time,
    parse_timestamp,
)
from lamplighter.platforms.jupyter import parse_snapshot
from lamplighter.policy import decide
from lamplighter.redaction import MASK, hide, redact
from lamplighter.server_url import split_server_url
from lamplighter.settings import MAX_DURATION, Settings, load_settings, option_specs, parse_duration

UTC = timezone.utc
FAST = settings(max_examples=150, deadline=None)

_secret = st.text(string.ascii_letters + string.digits + "-_.~", min_size=8, max_size=32)
_url_text = st.text(string.printable, max_size=60)
_hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "h.example", "[::1", "h:99999", "h:0", ""])
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_when = st.one_of(
    st.datetimes(timezones=st.just(UTC) | st.none()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.text(max_size=30),
    _json,
)


# -- URLs --------------------------------------------------------------------------------------


@FAST
@given(text=_url_text)
def test_url_splitter_raises_only_config_errors(text: str) -> None:
    try:
        base, _token = split_server_url(text)
    except ConfigError:
        return
    assert base.endswith("/") and "?" not in base and "@" not in base and "#" not in base
    assert split_server_url(base) == (base, None)  # the base parses to itself: parsed once, stable


@FAST
@given(
    host=_hosts,
    secret=_secret,
    where=st.sampled_from(["userinfo", "token", "authToken", "X-Amz-Signature", "other", "broken"]),
    junk=st.text(string.printable, max_size=10),
)
def test_url_errors_never_echo_a_credential(host: str, secret: str, where: str, junk: str) -> None:
    assume(secret not in junk)  # a secret the user also typed elsewhere in the URL is not ours to hide
    url = {
        "userinfo": f"http://me:{secret}@{host}/{junk}",
        "token": f"http://{host}/{junk}?token={secret}",
        "authToken": f"https://{host}/auth?authToken={secret}",
        "X-Amz-Signature": f"https://{host}/?X-Amz-Signature={secret}&{junk}",
        "other": f"http://{host}/?{junk}&session={secret}",
        "broken": f"http://{host}{junk}?token={secret}",
    }[where]
    try:
        base, token = split_server_url(url)
    except ConfigError as exc:
        assert secret not in str(exc)
        return
    assert secret not in base
    assert token in (None, secret)


# -- durations and settings -----------------------------------------------------------------------


@FAST
@given(
    value=st.one_of(
        st.text(max_size=25),
        st.from_regex(r"\A\s*\d{1,25}(\.\d{1,5})?\s*(ms|s|m|h|d)?\s*\Z"),
        st.floats(),
        st.integers(),
        st.booleans(),
        st.none(),
    )
)
def test_duration_parser_raises_only_value_error(value: object) -> None:
    try:
        parsed = parse_duration(value)
    except ValueError:
        return
    assert timedelta(0) <= parsed <= MAX_DURATION


_NAMES = [spec.name for spec in option_specs() if spec.name not in ("token_file",)]
_raw = st.one_of(
    st.text(max_size=20),
    st.floats(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.sampled_from(["0", "-1", "inf", "nan", "1e300", "99999999999999999999", "100000000d", "off", "10%"]),
)


@FAST
@given(name=st.sampled_from(_NAMES), raw=_raw, source=st.sampled_from(["flag", "env"]))
def test_settings_loader_raises_only_config_errors(name: str, raw: object, source: str) -> None:
    try:
        if source == "flag":
            loaded = load_settings({name: raw}, env={})
        else:
            loaded = load_settings(env={f"LAMPLIGHTER_{name.upper()}": str(raw).replace("\0", "")})
    except ConfigError:
        return
    for spec in option_specs():
        bounds = spec.metadata["bounds"]
        value = getattr(loaded, spec.name)
        if bounds is not None and value is not None:
            assert bounds[0] <= value <= bounds[1]


_toml_value = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "1e300", "0", "-5", "true", "[]", "{}", '"1000000000d"']),
    st.integers(min_value=-(10**18), max_value=10**18).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=15).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(_NAMES), value=_toml_value, secret=_secret)
def test_toml_settings_raise_only_config_errors_and_hide_the_token(
    name: str, value: str, secret: str, tmp_path_factory: Any
) -> None:
    assume(secret not in value)
    config = tmp_path_factory.mktemp("toml") / "c.toml"
    config.write_text(f'token = "{secret}"\n{name} = {value}\n' if name != "token" else f"{name} = {value}\n")
    try:
        load_settings(env={}, config_path=config)
    except ConfigError as exc:
        assert secret not in str(exc)


# -- timestamps and snapshots ---------------------------------------------------------------------


@FAST
@given(value=st.one_of(_when, st.datetimes(timezones=st.none() | st.timezones())))
def test_timestamp_parser_raises_only_value_error(value: object) -> None:
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        return
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert EARLIEST <= parsed < LATEST
    assert format_time(parsed, now=parsed).endswith(" UTC")


_kernel = st.fixed_dictionaries(
    {"id": _json | st.text(max_size=8), "last_activity": _when},
    optional={"name": _json, "execution_state": _json, "connections": _json},
)
_status = st.one_of(
    _json,
    st.fixed_dictionaries({"started": _when, "last_activity": _when}, optional={"connections": _json}),
)


@FAST
@given(
    status=_status,
    kernels=st.one_of(_json, st.lists(_kernel, max_size=3)),
    terminals=st.one_of(
        _json, st.lists(st.fixed_dictionaries({"name": _json, "last_activity": _when}), max_size=2)
    ),
    sessions=st.one_of(_json, st.lists(st.fixed_dictionaries({"path": _json, "kernel": _json}), max_size=2)),
    received_at=st.none() | st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)),
)
def test_parse_snapshot_raises_only_malformed_answer(
    status: Any, kernels: Any, terminals: Any, sessions: Any, received_at: datetime | None
) -> None:
    try:
        snap = parse_snapshot("http://h/", status, kernels, terminals, sessions, received_at=received_at)
    except MalformedAnswer as exc:
        assert len(str(exc)) < 1000
        return
    assert isinstance(snap, ServerSnapshot)
    if received_at is not None:
        latest = received_at + timedelta(days=1)
        assert all(k.last_activity <= latest for k in snap.kernels) and snap.last_activity <= latest


# -- the policy ---------------------------------------------------------------------------------

_NOW = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
_past = st.integers(min_value=0, max_value=3 * 86400).map(lambda s: _NOW - timedelta(seconds=s))
# What servers and signals report may lie a little in the future (clock skew).
_moment = st.integers(min_value=-3 * 86400, max_value=3600).map(lambda s: _NOW + timedelta(seconds=s))
_kernel_ids = st.sampled_from(["k1", "k2", "k3"])
_kernel_info = st.builds(
    KernelInfo,
    id=_kernel_ids,
    name=st.just("python3"),
    execution_state=st.sampled_from(["idle", "busy", "starting", "restarting", "dead", "unknown"]),
    last_activity=_moment,
    connections=st.integers(min_value=0, max_value=2),
)
_reading = st.builds(
    ActivityReading,
    source=st.sampled_from(["processes", "gpu", "files", "snooze"]),
    clock=st.sampled_from(Clock),
    at=st.none() | _moment,
    detail=st.just("a reading"),
    active_now=st.booleans(),
    hold_until=st.none() | _moment,
    ready_at=st.none() | _moment,
)
_snapshot = st.builds(
    ServerSnapshot,
    target=st.just("fake://server/"),
    started=_past,
    last_activity=_past,
    connections=st.integers(min_value=0, max_value=2),
    kernels=st.lists(_kernel_info, max_size=3, unique_by=lambda k: k.id).map(tuple),
    terminals=st.lists(
        st.builds(TerminalInfo, name=st.sampled_from(["1", "2"]), last_activity=_moment),
        max_size=2,
        unique_by=lambda t: t.name,
    ).map(tuple),
    readings=st.lists(_reading, max_size=3).map(tuple),
)
_observation: st.SearchStrategy[Observation] = _snapshot | st.builds(
    ProbeFailure, target=st.just("fake://server/"), error=st.just("refused"), unreachable=st.booleans()
)
# Remembered moments are in the past: the agent wrote them at an earlier ``now``.
_memory = st.builds(
    Memory,
    last_interaction=st.none() | _past,
    last_work=st.none() | _past,
    busy_since=st.dictionaries(_kernel_ids, _past, max_size=2),
    pending_since=st.dictionaries(_kernel_ids, _past, max_size=2),
    failing_since=st.none() | _past,
    notice_at=st.none() | _past,
)
_span = st.sampled_from(["1s", "30s", "10m", "1h", "2d"])
_policy_settings: st.SearchStrategy[Settings] = st.fixed_dictionaries(
    {},
    optional={
        "idle_timeout": st.sampled_from(["30s", "10m", "1h"]),
        "startup_grace": st.sampled_from(["0s", "5m", "2h"]),
        "max_busy": _span,
        "stuck_after": _span,
        "busy_recheck": st.sampled_from(["1s", "30s", "10m"]),
        "probe_interval": st.sampled_from(["1s", "1m", "2h"]),
        "kernel_timeout": _span,
        "terminal_timeout": _span,
        "keep_terminals": st.booleans(),
        "warn_before": st.sampled_from(["1s", "5m", "1h"]),
        "ignore_connections": st.booleans(),
        "skip_terminals": st.booleans(),
        "unreachable_timeout": _span,
        "unreachable_action": st.sampled_from(["report", "stop"]),
    },
).map(lambda flags: load_settings({"process_signal": False, **flags}, env={}))


@FAST
@given(observation=_observation, memory=_memory, policy=_policy_settings)
def test_the_policy_never_schedules_into_the_past(
    observation: Observation, memory: Memory, policy: Settings
) -> None:
    d = decide(observation, memory, policy, _NOW)
    assert d.next_check_at >= _NOW
    if d.action is Action.STOP:
        assert d.stop_at is not None and d.stop_at <= _NOW
    elif d.stop_at is not None and not d.provisional:
        # Idle but not yet due: the agent looks again at the deadline at the latest.
        assert d.stop_at > _NOW and d.next_check_at <= d.stop_at
    if d.provisional:
        assert d.action is Action.KEEP and d.stop_at is not None and d.stop_at <= _NOW


@FAST
@given(snap=_snapshot, memory=_memory, policy=_policy_settings)
def test_no_stop_while_a_work_signal_is_busy_or_cannot_tell_yet(
    snap: ServerSnapshot, memory: Memory, policy: Settings
) -> None:
    work = [r for r in snap.readings if r.clock is Clock.WORK and (r.active_now or r.ready_at is not None)]
    d = decide(snap, memory, policy, _NOW)
    if work:
        assert d.action is not Action.STOP
        assert not d.cull_terminals  # the busy tree may belong to any terminal


@FAST
@given(snap=_snapshot, memory=_memory, policy=_policy_settings)
def test_both_clocks_only_move_forward(snap: ServerSnapshot, memory: Memory, policy: Settings) -> None:
    remembered = decide(snap, memory, policy, _NOW).memory
    for before, after in (
        (memory.last_interaction, remembered.last_interaction),
        (memory.last_work, remembered.last_work),
    ):
        assert before is None or (after is not None and after >= before)
    assert remembered.failing_since is None and remembered.notice_at == memory.notice_at


# -- the redaction rule ----------------------------------------------------------------------------


@FAST
@given(secret=_secret, before=st.text(max_size=30), after=st.text(max_size=30))
def test_a_hidden_secret_never_survives_redaction(secret: str, before: str, after: str) -> None:
    hide(secret)
    text = redact(before + secret + after)
    assert secret not in text and MASK in text


@FAST
@given(
    secret=_secret,
    shape=st.sampled_from(
        [
            "> Authorization: token {}",
            "{{'Cookie': 'username-x={}'}}",
            "(b'Set-Cookie', b'username-h=\"2|{}|x\"; Path=/')",
            "https://me:{}@host/x",
            "GET https://d.studio/auth?authToken={}&x=1",
            "X-Amz-Signature={}",
        ]
    ),
)
def test_credentials_shaped_like_one_are_masked_unregistered(secret: str, shape: str) -> None:
    assert secret not in redact(shape.format(secret))


def test_finite_bound_checks_reject_nan() -> None:
    assert math.isnan(float("nan"))  # the loader relies on NaN failing every comparison
    try:
        load_settings({"cpu_threshold": float("nan")}, env={})
    except ConfigError as exc:
        assert "cpu_threshold" in str(exc)
    else:
        raise AssertionError("NaN was accepted")
