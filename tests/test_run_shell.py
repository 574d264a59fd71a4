"""The terminal runner and ``lamplighter run shell`` against a real Jupyter server."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lamplighter.cli import main
from lamplighter.errors import RemoteTimeout
from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.remote import Connection, ShellResult, TerminalSession, run_script, run_shell
from lamplighter.remote.terminal import _MarkerParser
from tests.test_remote_kernel import TcpProxy
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One real server for the module; every test checks it left no terminal behind."""
    started = start_local_server(tmp_path_factory.mktemp("shell-server"))
    yield started
    started.stop()


@pytest.fixture
def cli_env(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setenv("LAMPLIGHTER_TOKEN", server.token)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield ["--url", server.url]
    root.handlers[:] = handlers
    root.setLevel(level)


def terminals(server: LocalServer) -> list[str]:
    answer = httpx.get(f"{server.url}api/terminals", headers={"Authorization": f"token {server.token}"})
    return [t["name"] for t in answer.json()]


# -- the marker parser, no server ------------------------------------------------------------------


def test_parser_finds_output_between_markers_across_chunk_boundaries() -> None:
    parser = _MarkerParser("ab12")
    stream = (
        "old prompt $ __LLE_ab11:0__\r\n"  # a previous command's marker, replayed
        "\x1b[?2004l\r__LLS_ab12__\r\nhello \x1b[3"
        "1mred\x1b[0m\r"
        "\nlooks like __LLE_ab1:0__ but is not\r\npartial__LL"
        "E_ab12:4"
        "2__\r\n$ "
    )
    delivered = [parser.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)]
    assert parser.exit_code == 42
    assert parser.output == "hello red\nlooks like __LLE_ab1:0__ but is not\npartial"
    assert "".join(delivered) == parser.output


def test_parser_replay_after_reconnect_delivers_nothing_twice() -> None:
    parser = _MarkerParser("n1")
    first = parser.feed("__LLS_n1__\r\none\r\ntwo\r\n")
    parser.reset()  # a new connection replays everything the terminal printed
    again = parser.feed("$ __LLS_n1__\r\none\r\ntwo\r\nthree\r\n__LLE_n1:0__\r\n")
    assert (first, again) == ("one\ntwo\n", "three\n")
    assert parser.output == "one\ntwo\nthree\n" and parser.exit_code == 0


# -- against a server ----------------------------------------------------------------------------


async def test_exit_statuses_and_exact_output(server: LocalServer) -> None:
    async with Connection(server.url, token=server.token) as conn:
        assert await run_shell(conn, "echo hello") == ShellResult(0, "hello\n")
        async with TerminalSession(conn) as term:
            assert await term.run("echo to stderr >&2; exit 7") == ShellResult(7, "to stderr\n")
            missing = await term.run("no-such-command-here")
            assert missing.exit_code == 127 and "no-such-command-here" in missing.output
            tricky = "echo '__LLE_0123456789abcdef:0__'; echo '__LLS_x__'; printf 'no newline'"
            assert await term.run(tricky) == ShellResult(
                0, "__LLE_0123456789abcdef:0__\n__LLS_x__\nno newline"
            )
            assert await term.run(r"printf '\033[1;31mred\033[0m plain\n'") == ShellResult(0, "red plain\n")
            streamed: list[str] = []
            multi = await term.run('for i in 1 2 3; do\n  echo "n=$i"\ndone', on_output=streamed.append)
            assert multi == ShellResult(0, "n=1\nn=2\nn=3\n") and "".join(streamed) == multi.output
    assert terminals(server) == []


async def test_a_script_is_uploaded_run_with_bash_and_removed(server: LocalServer) -> None:
    script = 'set -u\necho "line one"\nfor i in 1 2; do echo "n=$i"; done\ncat <<\'EOF\'\n__LLE_feed:0__\nEOF\nexit 5\n'
    async with Connection(server.url, token=server.token) as conn:
        result = await run_script(conn, script)
    assert result == ShellResult(5, "line one\nn=1\nn=2\n__LLE_feed:0__\n")
    assert list(server.root_dir.glob("lamplighter-*.sh")) == []
    assert terminals(server) == []


async def test_timeout_interrupts_and_cleans_up(server: LocalServer) -> None:
    async with Connection(server.url, token=server.token) as conn:
        began = time.monotonic()
        with pytest.raises(RemoteTimeout, match=r"timeout of 0\.5 s"):
            await run_shell(conn, "sleep 30", timeout_s=0.5)
        assert time.monotonic() - began < 10
    assert terminals(server) == []


async def test_a_named_terminal_is_reused_and_kept(server: LocalServer) -> None:
    async with Connection(server.url, token=server.token) as conn:
        try:
            first = await run_shell(conn, "cd /; echo first", terminal="keepme")
            # A new connection gets the first command's output replayed: it must not leak in.
            second = await run_shell(conn, "echo second; pwd", terminal="keepme")
            assert (first, second.output) == (ShellResult(0, "first\n"), f"second\n{server.root_dir}\n")
            assert terminals(server) == ["keepme"]
        finally:
            await conn.request("DELETE", "api/terminals/keepme")


async def test_a_dropped_websocket_loses_and_repeats_nothing(server: LocalServer) -> None:
    async with (
        TcpProxy(server.port) as proxy,
        Connection(proxy.url(server), token=server.token) as conn,
        TerminalSession(conn) as term,
    ):
        streamed: list[str] = []

        def on_output(text: str) -> None:
            streamed.append(text)
            if len(streamed) == 1:
                proxy.drop()

        result = await term.run("for i in $(seq 1 20); do echo $i; sleep 0.02; done", on_output=on_output)
        assert proxy.accepted >= 2
        assert result == ShellResult(0, "".join(f"{i}\n" for i in range(1, 21)))
        assert "".join(streamed) == result.output
    assert terminals(server) == []


async def test_cookie_and_xsrf_auth(server: LocalServer) -> None:
    async with httpx.AsyncClient() as client:
        await client.get(server.url + "tree", params={"token": server.token}, follow_redirects=True)
        cookies = {c.name: c.value for c in client.cookies.jar if c.name.startswith("username")}
    async with Connection(server.url, cookies=cookies) as conn:
        assert not conn.uses_token
        assert await run_shell(conn, "echo via cookies") == ShellResult(0, "via cookies\n")
        assert await run_script(conn, "echo uploaded with _xsrf\n") == ShellResult(0, "uploaded with _xsrf\n")
    assert terminals(server) == []


# -- the command ---------------------------------------------------------------------------------


def test_cli_exits_with_the_remote_status(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["run", "shell", *cli_env, "--", "echo", "hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    assert main(["run", "shell", *cli_env, "--", "exit 7"]) == 7
    assert main(["run", "shell", *cli_env, "--", "no-such-command-here"]) == 127
    script = tmp_path / "job.sh"
    script.write_text("echo from script\nexit 3\n")
    assert main(["run", "shell", "--script", str(script), *cli_env]) == 3
    assert capsys.readouterr().out.endswith("from script\n")
    # A shell that ran `exit N` ends its terminal itself; under load the server may still list it for a
    # moment after our DELETE (answered 404 while it is being reaped), so wait for it to go.
    wait_until(lambda: terminals(server) == [], timeout_s=15, what="the run's terminals to be gone")


def test_cli_tool_failures_are_told_apart_from_the_command(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "shell", "--timeout", "0.5", *cli_env, "--", "sleep 30"]) == 124
    assert main(["run", "shell", *cli_env, "--token", "wrong", "--", "true"]) == 255
    assert "refused" in capsys.readouterr().err
    assert main(["run", "shell", *cli_env]) == 2  # neither a command nor a script
    assert terminals(server) == []
