"""The shared connection against a real Jupyter server: token, cookies + _xsrf, base URLs, errors."""

from __future__ import annotations

import httpx
import pytest

from lamplighter.errors import AuthRejected, ConfigError, ConnectFailed, MalformedAnswer
from lamplighter.localserver import LocalServer
from lamplighter.remote.connection import Connection
from lamplighter.server_url import split_server_url
from tests.conftest import ServerFactory
from tests.ports import refused_port


def test_split_server_url_lifts_token_and_normalises() -> None:
    assert split_server_url("http://h:8888/user/a?token=abc") == ("http://h:8888/user/a/", "abc")
    assert split_server_url("https://h/") == ("https://h/", None)
    with pytest.raises(ConfigError, match="url"):
        split_server_url("ftp://h/")
    with pytest.raises(ConfigError, match="url"):
        split_server_url("not a url")


def test_repr_hides_token() -> None:
    conn = Connection("http://127.0.0.1:1/?token=supersecret")
    assert "supersecret" not in repr(conn)
    assert "supersecret" not in conn.display_url


async def test_token_auth_and_base_url(server_factory: ServerFactory) -> None:
    server = server_factory(base_url="/jupyterlab/default/")
    async with Connection(server.url, token=server.token) as conn:
        status = await conn.get("api/status")
        assert set(status) >= {"started", "last_activity", "kernels", "connections"}
        kernel = await conn.request("POST", "api/kernels", json_body={"name": "python3"})
        assert kernel["name"] == "python3"
        assert await conn.request("DELETE", f"api/kernels/{kernel['id']}") is None


async def test_cookie_auth_fetches_xsrf(jupyter: LocalServer) -> None:
    # Log in the way a browser does: the token once in the URL, then only cookies.
    with httpx.Client() as client:
        client.get(jupyter.url + "tree", params={"token": jupyter.token}, follow_redirects=True)
        cookies = {c.name: c.value for c in client.cookies.jar if c.name.startswith("username")}
    assert cookies, "the server did not set a login cookie"
    async with Connection(jupyter.url, cookies=cookies) as conn:
        assert not conn.uses_token
        terminal = await conn.request("POST", "api/terminals")
        assert terminal["name"]
        await conn.request("DELETE", f"api/terminals/{terminal['name']}")
        assert "_xsrf" in conn.ws_headers()["Cookie"]


async def test_wrong_token_is_auth_rejected(jupyter: LocalServer) -> None:
    async with Connection(jupyter.url, token="wrong") as conn:
        with pytest.raises(AuthRejected) as info:
            await conn.get("api/status")
    assert "wrong" not in str(info.value)


async def test_nothing_listening_is_connect_failed() -> None:
    with refused_port() as port:
        async with Connection(f"http://127.0.0.1:{port}/", token="t") as conn:
            with pytest.raises(ConnectFailed, match="cannot connect"):
                await conn.get("api/status")


async def test_non_json_answer_is_malformed() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hi</html>"))
    async with Connection("http://example.invalid/", token="t", transport=transport) as conn:
        with pytest.raises(MalformedAnswer):
            await conn.get("api/status")


def test_ws_url_keeps_base_path() -> None:
    conn = Connection("https://h/user/alice/", token="t")
    assert conn.ws_url("api/kernels/k/channels", {"session_id": "s"}) == (
        "wss://h/user/alice/api/kernels/k/channels?session_id=s"
    )
