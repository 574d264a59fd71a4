"""Per-group idle timeouts and the veto hook, in the hub service against the real hub of tests/hub.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lamplighter.errors import ConfigError
from lamplighter.hub.policies import load_veto_hook, parse_timeouts
from lamplighter.model import Action, Decision
from lamplighter.settings import load_settings
from tests.hub import Hub, hub_settings, new_user, running_fleet
from tests.test_hub_fleet import gone, stops
from tests.waiting import wait_until_async

#: Users the veto hook below keeps, and what it was asked.
KEEP: set[str] = set()
ASKED: list[tuple[Mapping[str, Any], Mapping[str, Any], Decision]] = []


async def veto(server: Mapping[str, Any], user: Mapping[str, Any], decision: Decision) -> str:
    ASKED.append((server, user, decision))
    return "keep" if user["name"] in KEEP else "stop"


async def test_a_groups_shorter_timeout_stops_its_members_only(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    member, other = new_user(hub_users), new_user(hub_users)
    await asyncio.gather(asyncio.to_thread(hub.start, member), asyncio.to_thread(hub.start, other))
    group = f"gpu{member}"
    answer = hub.call("POST", f"groups/{group}", json={"users": [member]})
    assert answer.status_code == 201, answer.text
    try:
        settings = hub_settings(hub, tmp_path, idle_timeout="1h", group_idle_timeouts=f"{group}=3s")
        async with running_fleet(hub, settings):
            await gone(hub, settings, member)
        assert [e.target for e in stops(settings)] == [f"{hub.api.split('/hub/')[0]}/user/{member}/"]
        assert hub.server(other) is not None
    finally:
        hub.call("DELETE", f"groups/{group}")


async def test_the_veto_hook_keeps_what_it_says_and_is_given_the_models(
    hub: Hub, hub_users: list[str], tmp_path: Path
) -> None:
    kept, stopped = new_user(hub_users), new_user(hub_users)
    KEEP.add(kept)
    await asyncio.gather(asyncio.to_thread(hub.start, kept), asyncio.to_thread(hub.start, stopped))
    settings = hub_settings(hub, tmp_path, idle_timeout="3s", veto_hook=f"{__name__}:veto")
    async with running_fleet(hub, settings):
        await gone(hub, settings, stopped)
        # The two servers' deadlines differ by their start: the kept one's may come after the other's stop.
        await wait_until_async(
            lambda: any(e.target.endswith(f"/user/{kept}/") for e in stops(settings)),
            timeout_s=30,
            what="the veto hook's keep",
        )
    assert hub.server(kept) is not None
    by_target = {e.target.rstrip("/").rsplit("/", 1)[-1]: e for e in stops(settings)}
    assert by_target[stopped].verdict == "stopped"
    assert by_target[kept].verdict == "skipped" and "veto hook keeps" in by_target[kept].summary
    asked = {user["name"]: (server, decision) for server, user, decision in ASKED}
    server, decision = asked[kept]
    assert server["url"] == f"/user/{kept}/" and decision.action is Action.STOP and "idle" in decision.reason


def test_bad_policy_settings_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="group_idle_timeouts: expected NAME=DURATION"):
        parse_timeouts(("gpu",), "group_idle_timeouts")
    with pytest.raises(ConfigError, match="idle_timeout"):
        parse_timeouts(("gpu=soon",), "group_idle_timeouts")
    with pytest.raises(ConfigError, match="veto_hook: cannot load"):
        load_veto_hook("no_such_module_here:hook")
    with pytest.raises(ConfigError, match="veto_hook: expected 'module:function'"):
        load_veto_hook("justaname")
    assert load_settings({"group_idle_timeouts": "a=1m, b=2h"}, env={}).group_idle_timeouts == (
        "a=1m",
        "b=2h",
    )
