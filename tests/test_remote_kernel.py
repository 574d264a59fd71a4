"""KernelSession against a real Jupyter server: both framings, outputs, interrupts, death, reconnects, auth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from lamplighter.errors import KernelDied, NotFound, RemoteTimeout
from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.remote import Connection, KernelSession, shutdown_kernel, start_kernel
from lamplighter.remote.frames import decode_frame, encode_frame
from lamplighter.remote.outputs import DisplayRegistry, OutputArea


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One real server for the module (each test cleans up after itself and checks it did).

    The restarter polls fast so a killed kernel is noticed in a fraction of a second, not 3 s.
    """
    started = start_local_server(
        tmp_path_factory.mktemp("kernel-server"), extra_args=["--KernelRestarter.time_to_dead=0.3"]
    )
    yield started
    started.stop()


class TcpProxy:
    """A loopback TCP proxy whose connections a test can cut, like a network drop, while it keeps listening."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, server: LocalServer) -> str:
        return server.url.replace(f":{server.port}/", f":{self.port}/")

    def drop(self) -> None:
        """Abort every connection in flight (both sides see a reset)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def kernel(conn: Connection) -> AsyncIterator[str]:
    kernel_id = await start_kernel(conn, "python3")
    try:
        yield kernel_id
    finally:
        await shutdown_kernel(conn, kernel_id)


async def assert_nothing_left(conn: Connection) -> None:
    assert await conn.get("api/kernels") == []
    assert await conn.get("api/sessions") == []


# -- pure pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("v1", [True, False])
def test_frames_round_trip(v1: bool) -> None:
    header = {"msg_id": "m1", "msg_type": "execute_request", "session": "s", "date": "2026-01-01T00:00:00Z"}
    frame = encode_frame("shell", header, {"code": "1 + 1"}, v1)
    assert isinstance(frame, bytes) == v1
    msg = decode_frame(frame, v1)
    assert (msg.channel, msg.msg_type, msg.parent_id, msg.content) == (
        "shell",
        "execute_request",
        None,
        {"code": "1 + 1"},
    )


def test_output_rules_follow_nbclient() -> None:
    displays = DisplayRegistry()
    first: list[dict[str, Any]] = []
    area = OutputArea(first, displays)
    area.handle("stream", {"name": "stdout", "text": "a\n"})
    area.handle("stream", {"name": "stdout", "text": "10%\r"})
    area.handle("stream", {"name": "stdout", "text": "100%\n"})
    area.handle("stream", {"name": "stderr", "text": "warn\n"})
    area.handle(
        "display_data", {"data": {"text/plain": "v1"}, "metadata": {}, "transient": {"display_id": "d"}}
    )
    assert first[0] == {"output_type": "stream", "name": "stdout", "text": "a\n100%\n"}
    assert first[2] == {"output_type": "display_data", "data": {"text/plain": "v1"}, "metadata": {}}

    second: list[dict[str, Any]] = []
    area2 = OutputArea(second, displays)
    area2.handle(
        "update_display_data",
        {"data": {"text/plain": "v2"}, "metadata": {}, "transient": {"display_id": "d"}},
    )
    assert second == [] and first[2]["data"] == {"text/plain": "v2"}  # updated in the earlier cell
    area2.handle("stream", {"name": "stdout", "text": "old\n"})
    area2.handle("clear_output", {"wait": True})
    assert second[0]["text"] == "old\n"  # wait=True clears only when the next output arrives
    area2.handle("stream", {"name": "stdout", "text": "new\n"})
    assert second == [{"output_type": "stream", "name": "stdout", "text": "new\n"}]


# -- against a server ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["auto", "legacy"])
async def test_execute_collects_outputs_on_both_framings(server: LocalServer, protocol: Any) -> None:
    async with Connection(server.url, token=server.token) as conn:
        async with kernel(conn) as kernel_id, KernelSession(conn, kernel_id, protocol=protocol) as ks:
            assert ks.subprotocol == ("v1" if protocol == "auto" else "legacy")
            assert ks.language == "python" and ks.implementation == "ipython"
            seen: list[str] = []
            result = await ks.execute(
                "print('hello')\n6 * 7", on_output=lambda kind, content: seen.append(kind)
            )
            assert result.ok and result.execution_count == 1
            assert result.outputs == [
                {"output_type": "stream", "name": "stdout", "text": "hello\n"},
                {
                    "output_type": "execute_result",
                    "data": {"text/plain": "42"},
                    "metadata": {},
                    "execution_count": 1,
                },
            ]
            assert seen == ["stream", "execute_result"]
            assert set(result.timing) == {
                "iopub.status.busy",
                "iopub.execute_input",
                "shell.execute_reply",
                "iopub.status.idle",
            }
            failed = await ks.execute("1 / 0")
            assert failed.status == "error" and failed.ename == "ZeroDivisionError"
            assert failed.outputs[-1]["output_type"] == "error" and failed.traceback
        await assert_nothing_left(conn)


async def test_cell_timeout_interrupts_and_the_kernel_lives_on(server: LocalServer) -> None:
    async with (
        Connection(server.url, token=server.token) as conn,
        kernel(conn) as kernel_id,
        KernelSession(conn, kernel_id) as ks,
    ):
        outputs: list[dict[str, Any]] = []
        began = time.monotonic()
        with pytest.raises(RemoteTimeout, match=r"per-cell timeout of 0\.5 s"):
            code = "print('started', flush=True)\nimport time\ntime.sleep(60)"
            await ks.execute(code, timeout_s=0.5, outputs=outputs)
        assert time.monotonic() - began < 10
        # The interrupt reached the cell: it ended with KeyboardInterrupt, and the kernel still works.
        assert outputs[0]["text"] == "started\n"
        assert outputs[-1]["output_type"] == "error" and outputs[-1]["ename"] == "KeyboardInterrupt"
        assert (await ks.execute("1 + 1")).outputs[0]["data"] == {"text/plain": "2"}


async def test_a_killed_kernel_fails_the_request_with_kernel_died(server: LocalServer) -> None:
    async with Connection(server.url, token=server.token) as conn:
        async with kernel(conn) as kernel_id, KernelSession(conn, kernel_id) as ks:
            await ks.execute("import os")
            with pytest.raises(KernelDied, match="died"):
                await ks.execute("os.kill(os.getpid(), 9)", timeout_s=30)
            with pytest.raises(KernelDied):
                await ks.execute("1")  # the session stays broken: the kernel's state is gone
        await assert_nothing_left(conn)


async def test_a_websocket_to_a_missing_kernel_is_not_found(server: LocalServer) -> None:
    async with Connection(server.url, token=server.token) as conn:
        with pytest.raises(NotFound, match="HTTP 404"):
            async with KernelSession(conn, "00000000-0000-4000-8000-000000000000"):
                pass


async def test_dropped_websocket_reconnects_without_losing_output(server: LocalServer) -> None:
    code = "import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.03)"
    async with (
        Connection(server.url, token=server.token) as direct,
        kernel(direct) as kernel_id,
        TcpProxy(server.port) as proxy,
        Connection(proxy.url(server), token=server.token) as conn,
        KernelSession(conn, kernel_id) as ks,
    ):
        received: list[str] = []

        def on_output(kind: str, content: Any) -> None:
            received.append(content["text"])
            if len(received) == 5:
                proxy.drop()  # mid-cell: 25 more lines are still to come

        result = await ks.execute(code, on_output=on_output, timeout_s=30)
        assert ks.reconnects == 1 and proxy.accepted == 2
        assert result.ok
        assert result.outputs == [
            {"output_type": "stream", "name": "stdout", "text": "".join(f"{i}\n" for i in range(30))}
        ]
        assert (await ks.execute("i")).outputs[0]["data"] == {"text/plain": "29"}


async def test_cookie_auth_opens_the_kernel_websocket(server: LocalServer) -> None:
    async with httpx.AsyncClient() as client:
        await client.get(server.url + "tree", params={"token": server.token}, follow_redirects=True)
        cookies = {c.name: c.value for c in client.cookies.jar if c.name.startswith("username")}
    async with Connection(server.url, cookies=cookies) as conn:
        assert not conn.uses_token
        async with kernel(conn) as kernel_id, KernelSession(conn, kernel_id) as ks:
            assert (await ks.execute("'via cookies'")).outputs[0]["data"] == {"text/plain": "'via cookies'"}
        await assert_nothing_left(conn)


@pytest.mark.parametrize("v1", [True, False])
def test_a_frame_keeps_its_binary_buffers(v1: bool) -> None:
    """A widget's bytes travel as buffers after the JSON parts; both framings keep them, in order."""
    import struct

    header = {"msg_id": "m", "msg_type": "comm_msg", "date": "2026-01-01T00:00:00Z"}
    parent = {"msg_id": "p"}
    content = {"comm_id": "c", "data": {"state": {}, "buffer_paths": [["value"], ["other"]]}}
    buffers = [b"\x89PNG\x00\xff", b"two"]
    if v1:
        parts = [b"iopub", *(json.dumps(p).encode() for p in (header, parent, {}, content)), *buffers]
        offsets = [8 * (len(parts) + 2)]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
        frame = b"".join(
            [len(offsets).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts]
        )
    else:
        body = json.dumps({"channel": "iopub", "header": header, "parent_header": parent, "content": content})
        pieces = [body.encode(), *buffers]
        starts = [4 * (len(pieces) + 1)]
        for piece in pieces[:-1]:
            starts.append(starts[-1] + len(piece))
        frame = struct.pack("!" + "I" * (len(pieces) + 1), len(pieces), *starts) + b"".join(pieces)
    msg = decode_frame(frame, v1)
    assert (msg.channel, msg.msg_type, msg.parent_id, msg.content) == ("iopub", "comm_msg", "p", content)
    assert msg.buffers == tuple(buffers)
