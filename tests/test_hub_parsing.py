"""The hub's answers parsed at the border, which hub server a URL or environment names, the timeout a
server gets, and the wiring that sends a hub user's server to the hub's stop: pure, no hub needed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lamplighter.errors import MalformedAnswer
from lamplighter.hub.policies import idle_timeout_for
from lamplighter.platforms.jupyter import JupyterShutdown
from lamplighter.platforms.jupyterhub import HubServer, HubStop, parse_users, server_from_env_or_url
from lamplighter.remote import Connection
from lamplighter.settings import load_settings
from lamplighter.wiring import build_stopper, row_for


def test_only_ready_servers_that_are_not_pending_are_listed() -> None:
    users = [
        {
            "name": "ann",
            "admin": True,
            "groups": ["gpu"],
            "servers": {
                "": {
                    "ready": True,
                    "pending": None,
                    "url": "/user/ann/",
                    "last_activity": "2026-01-01T10:00:00Z",
                },
                "big": {"ready": True, "pending": "stop", "url": "/user/ann/big/"},
                "new": {"ready": False, "pending": "spawn", "url": "/user/ann/new/"},
            },
        },
        {"name": "bob", "servers": {}},
    ]
    [server] = parse_users(users)
    assert (server.label, server.user_admin, server.user_groups) == ("ann", True, ("gpu",))
    assert server.last_activity is not None and server.last_activity.tzinfo is not None
    assert "servers" not in server.user_model and server.server_model["url"] == "/user/ann/"


@pytest.mark.parametrize(
    "users",
    [{"name": "x"}, [{"servers": {}}], [{"name": "x", "servers": []}], [{"name": "x", "servers": {"": 1}}]],
)
def test_off_shape_user_models_are_malformed(users: object) -> None:
    with pytest.raises(MalformedAnswer):
        parse_users(users)


def test_a_bad_timestamp_is_malformed() -> None:
    users = [{"name": "x", "servers": {"": {"ready": True, "url": "/user/x/", "started": "yesterday"}}}]
    with pytest.raises(MalformedAnswer, match="started of x/"):
        parse_users(users)


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://hub.example/user/ann/", ("ann", "", "users/ann/server")),
        ({}, "https://hub.example/prefix/user/ann/gpu/", ("ann", "gpu", "users/ann/servers/gpu")),
        ({}, "https://hub.example/user/a%40b/", ("a@b", "", "users/a%40b/server")),
        (
            {"JUPYTERHUB_USER": "ann", "JUPYTERHUB_API_URL": "http://h/hub/api"},
            None,
            ("ann", "", "users/ann/server"),
        ),
        (
            {
                "JUPYTERHUB_USER": "ann",
                "JUPYTERHUB_SERVER_NAME": "gpu",
                "JUPYTERHUB_API_URL": "http://h/hub/api",
            },
            "http://127.0.0.1:8888/user/ann/gpu/",
            ("ann", "gpu", "users/ann/servers/gpu"),
        ),
        ({}, "http://127.0.0.1:8888/", None),
        ({}, "http://127.0.0.1:8888/user/ann/lab/tree/", None),
    ],
)
def test_which_hub_server_a_url_or_the_environment_names(
    env: dict[str, str], url: str | None, expected: tuple[str, str, str] | None
) -> None:
    server = server_from_env_or_url(env, url)
    assert (None if server is None else (server.user, server.name, server.api_path)) == expected


def _server(groups: tuple[str, ...] = (), profile: str | None = None) -> HubServer:
    options = {"profile": profile} if profile else {}
    return HubServer("u", "", "/user/u/", None, None, user_groups=groups, user_options=options)


@pytest.mark.parametrize(
    ("server", "minutes", "source"),
    [
        (_server(), 60, None),
        (_server(groups=("gpu",)), 15, "group gpu"),
        (_server(groups=("gpu", "short")), 5, "group short"),
        (_server(groups=("long",)), 60, None),  # a longer group timeout never lengthens the default
        (_server(profile="a100"), 10, "profile a100"),
        (_server(groups=("gpu",), profile="a100"), 10, "profile a100"),
        (_server(profile="unknown"), 60, None),
    ],
)
def test_the_shortest_applicable_timeout_wins(server: HubServer, minutes: int, source: str | None) -> None:
    groups = {"gpu": timedelta(minutes=15), "short": timedelta(minutes=5), "long": timedelta(hours=8)}
    profiles = {"a100": timedelta(minutes=10)}
    assert idle_timeout_for(server, timedelta(hours=1), groups, profiles) == (
        timedelta(minutes=minutes),
        source,
    )


def test_a_hub_users_server_is_stopped_through_the_hub_once_the_hub_is_known() -> None:
    conn = Connection("http://127.0.0.1:1/user/ann/")
    plain = load_settings({"url": "http://127.0.0.1:1/user/ann/"}, env={})
    assert isinstance(build_stopper(plain, conn, "t"), JupyterShutdown)  # no hub given: the server's own
    behind = load_settings(
        {"url": "http://127.0.0.1:1/user/ann/", "hub_url": "http://127.0.0.1:2/hub/api"}, env={}
    )
    row, resolved = row_for(behind)
    assert resolved.platform == "jupyterhub" and not row.stops_in_process
    stopper = build_stopper(behind, conn, "t", in_process=JupyterShutdown(conn))
    assert isinstance(stopper, HubStop)
    assert stopper.description == "DELETE http://127.0.0.1:2/hub/api/users/ann/server"
