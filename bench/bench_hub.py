"""``lamplighter hub`` beside jupyterhub-idle-culler on one real JupyterHub, in one run (prints, asserts nothing).

Side by side (``--part side``): one hub (configurable-http-proxy from npm, SimpleLocalProcessSpawner,
real ``jupyterhub-singleuser`` servers), its users split into two identical halves, one per tool.
Each tool's role is scoped to its own group (``list:users!group=…``, ``delete:servers!group=…``), so
it sees and stops only its half: both run at once, under the same load, with the same idle timeout.
Each half has idle servers (a kernel that ran ``x = 1``) and busy ones (a kernel in a silent
``time.sleep`` cell, its websocket closed: busy, printing nothing, nobody connected). Both tools run
as the separate processes a hub would start, each with its hub API URL pointed at a counting relay
in front of the hub, so every hub API request it makes is counted. The hub's activity intervals are
lowered to 1 s (``last_activity_interval``, ``JUPYTERHUB_ACTIVITY_INTERVAL``, ``activity_resolution``)
so that the culler sees a server's activity within a second rather than 5 minutes: its best case.
Figures per tool: stop lag past the deadline (the bench's last contact with the server + the
timeout, to the moment the hub no longer lists it; polled every 0.25 s), busy servers wrongly
stopped, hub API requests per hour, RSS and CPU per hour (psutil). Each tool keeps its own default
``cull_every`` (lamplighter: a tenth of the timeout; the culler: half of it) unless ``--cull-every``.

Scale (``--part scale``): one hub whose servers are stand-ins (bench/hub_standins.py: a spawner that
starts no process, one local responder answering the Jupyter API for all of them), users created
through the hub's API in bulk; their servers registered in the hub's database and restored by a hub
restart (``--setup restore``, the default: the hub polls each spawner, checks its address, adds its
route) or started one by one through the API (``--setup api``: 2-10 a second on 2 loaded cores).
The stand-in hub keeps its default activity intervals. At each ``--sizes`` step:
lamplighter's first full pass (list the hub, probe every server, decide each; in this process, at
the default concurrency) and its re-list (what every later ``cull_every`` costs), time and requests,
beside jupyterhub-idle-culler's own pass (``cull_idle``, in this process too) over the same hub.
Setting up is bounded by ``--setup-budget``: a size not reached in time is reported as such.

Run: ``.venv/bin/python bench/bench_hub.py [--part side|scale|all] [--servers 8] [--timeout 20]
[--sizes 100,1000,10000]``; ``--quick`` is the smoke test's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # tests.chp: the proxy launcher the hub tests use (binds port 0)

from tests.chp import running_proxy  # noqa: E402

from lamplighter.hub.fleet import HubFleet  # noqa: E402
from lamplighter.journal import Journal  # noqa: E402
from lamplighter.platforms.jupyterhub import HubApi  # noqa: E402
from lamplighter.remote import Connection, KernelSession, start_kernel  # noqa: E402
from lamplighter.settings import load_settings  # noqa: E402

TOOLS = ("lamplighter", "culler")
_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


# -- the hub --------------------------------------------------------------------------------


@dataclass
class Hub:
    api: str  # http://127.0.0.1:PORT/hub/api/
    admin_token: str
    tokens: dict[str, str]  # service name → its token
    log: Path
    process: subprocess.Popen[bytes]
    workdir: Path
    env: dict[str, str]

    def restart(self) -> None:
        """Stop the hub and start it again on the same port, with the same database and routes."""
        _end(self.process)
        self.process = _launch(self.workdir, self.env, self.log)
        if not _wait_up(self.process, self.api):
            raise SystemExit(f"the hub did not come back: {self.log.read_text()[-2000:]}")

    def client(self, timeout_s: float = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api,
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=64),
        )


_CONFIG = """\
import sys
sys.path.insert(0, {bench!r})
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = {spawner!r}
c.JupyterHub.bind_url = {public!r}
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.db_url = "sqlite:///{workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.pid_file = "{workdir}/hub.pid"
c.JupyterHub.cleanup_servers = {cleanup!r}
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = {activity_s}
c.JupyterHub.activity_resolution = {activity_s}
c.JupyterHub.log_level = "WARN"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = {proxy_api!r}
c.SimpleLocalProcessSpawner.home_dir_template = "{workdir}/home/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.Spawner.environment = {{"JUPYTERHUB_ACTIVITY_INTERVAL": "{activity_s}", "STANDIN_RESPONDER_URL": {responder!r}}}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.JupyterHub.services = {services!r}
c.JupyterHub.load_roles = {roles!r}
"""


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_hub(
    workdir: Path, *, spawner: str, roles: dict[str, list[str]], responder: str = ""
) -> Iterator[Hub]:
    """A hub behind configurable-http-proxy; ``roles``: service name → its scopes (one role each)."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin = secrets.token_hex(16)
    tokens = {name: secrets.token_hex(16) for name in roles}
    services = [{"name": "bench", "api_token": admin}] + [
        {"name": name, "api_token": token} for name, token in tokens.items()
    ]
    all_roles = [
        {
            "name": "bench",
            "scopes": ["admin:users", "admin:servers", "admin:groups", "access:servers", "proxy"],
            "services": ["bench"],
        }
    ] + [{"name": name, "scopes": scopes, "services": [name]} for name, scopes in roles.items()]
    singleuser = str(Path(sys.executable).with_name("jupyterhub-singleuser"))
    args = ["--allow-root"] if os.geteuid() == 0 else []
    log = workdir / "hub.log"
    with running_proxy(workdir) as proxy:
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": proxy.token}
        for _ in range(5):
            port = _kernel_port()
            config = _CONFIG.format(
                bench=str(BENCH),
                spawner=spawner,
                public=proxy.url,
                port=port,
                workdir=str(workdir),
                proxy_api=proxy.api,
                singleuser=singleuser,
                args=args,
                responder=responder,
                cleanup=spawner == "simple",  # stand-ins survive a hub restart (--setup restore)
                # Lowered for the real servers; the hub's default for stand-ins, whose activity nobody
                # reads: a 1 s sweep over 1,000 routes blocks the hub's event loop for ~40 s here.
                activity_s=1 if spawner == "simple" else 300,
                services=services,
                roles=all_roles,
            )
            (workdir / "jupyterhub_config.py").write_text(textwrap.dedent(config))
            process = _launch(workdir, env, log)
            api = f"http://127.0.0.1:{port}/hub/api/"
            if _wait_up(process, api):
                break
            _end(process)  # its port was taken meanwhile (it exits): try another
        else:
            raise SystemExit(f"the hub did not start: {log.read_text()[-2000:]}")
        hub = Hub(api, admin, tokens, log, process, workdir, env)
        try:
            yield hub
        finally:
            _end(hub.process)


def _launch(workdir: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(workdir / "jupyterhub_config.py")],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait_up(process: subprocess.Popen[bytes], api: str, timeout_s: float = 300) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with suppress(httpx.HTTPError):
            if httpx.get(api, timeout=5).status_code == 200:
                return True
        time.sleep(0.2)
    return False


def _end(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def create_users(hub: Hub, names: Sequence[str], group: str | None = None) -> None:
    """In bulk, as an admin would: ``POST /users`` with many names, then one group call."""
    async with hub.client(timeout_s=600) as client:
        for i in range(0, len(names), 200):
            chunk = list(names[i : i + 200])
            answer = await client.post("users", json={"usernames": chunk})
            assert answer.status_code in (201, 409), answer.text
            if group:
                answer = await client.post(f"groups/{group}/users", json={"users": chunk})
                assert answer.status_code == 200, answer.text


async def start_servers(hub: Hub, names: Sequence[str], *, concurrency: int, budget_s: float) -> list[str]:
    """Start each user's server through the hub; the names ready within ``budget_s``."""
    limit = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + budget_s
    ready: list[str] = []

    async with hub.client(timeout_s=180) as client:

        async def one(name: str) -> None:
            async with limit:
                if time.monotonic() > deadline:
                    return
                answer = await client.post(f"users/{name}/server")
                assert answer.status_code in (201, 202), f"{name}: {answer.status_code} {answer.text}"
                while answer.status_code == 202 and time.monotonic() < deadline:
                    model = (await client.get(f"users/{name}")).json()
                    server = model.get("servers", {}).get("")
                    if server and server.get("ready"):
                        break
                    await asyncio.sleep(0.25)
                ready.append(name)

        await asyncio.gather(*(one(n) for n in names))
    return ready


def register_running(hub: Hub, names: Sequence[str], responder: str) -> None:
    """Stand-in servers the way the hub finds them when it starts again after a restart: rows in its
    database (a server at the responder's address, the spawner's state); the hub itself then polls
    each spawner, checks each address, and adds the missing routes to the proxy."""
    from datetime import datetime, timezone

    from jupyterhub import orm

    port = int(responder.rsplit(":", 1)[1])
    _end(hub.process)
    db = orm.new_session_factory(f"sqlite:///{hub.workdir}/hub.sqlite")()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    wanted = set(names)
    for user in db.query(orm.User).filter(orm.User.name.in_(wanted)):
        server = orm.Server(proto="http", ip="127.0.0.1", port=port, base_url=f"/user/{user.name}/")
        spawner = next((sp for sp in user._orm_spawners if sp.name == ""), None)
        if spawner is None:
            spawner = orm.Spawner(user=user, name="")
            db.add(spawner)
        spawner.server = server
        spawner.state = {"standin": True}
        spawner.started = spawner.last_activity = now
        db.add(server)
    db.commit()
    db.close()
    hub.restart()


async def wait_ready(hub: Hub, count: int, timeout_s: float) -> int:
    """Until the hub lists ``count`` ready servers with routes (or the time is up); how many it has."""
    deadline = time.monotonic() + timeout_s
    have = 0
    async with hub.client() as client:
        while time.monotonic() < deadline:
            have = len([m for m in (await server_states(client)).values() if m.get("ready")])
            if have >= count:
                routes = (await client.get("proxy", params={"limit": "1"})).status_code == 200
                if routes:
                    return have
            await asyncio.sleep(2)
    return have


async def server_states(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """user → its default server's model (absent: not running), every user, through the admin token."""
    states: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = (
            await client.get(
                "users",
                params={"offset": str(offset), "limit": "200"},
                headers={"Accept": "application/jupyterhub-pagination+json"},
            )
        ).json()
        for user in page["items"]:
            server = (user.get("servers") or {}).get("")
            if server:
                states[user["name"]] = server
        following = page["_pagination"].get("next")
        if not following:
            return states
        offset = following["offset"]


# -- a counting relay in front of the hub's API ------------------------------------------------


class CountingRelay:
    """A TCP relay that reads each HTTP/1.1 request a client sends (they send one at a time, with a
    Content-Length when there is a body) and counts it, by method and API path, before passing it on
    untouched (the Host header too: the hub's pagination links come back through the relay)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def back() -> None:
            with suppress(ConnectionError, asyncio.IncompleteReadError):
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        answering = asyncio.create_task(back())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
                path = rest.rpartition(" ")[0].split("?", 1)[0]
                self.counts[f"{method} {_api_kind(path)}"] += 1
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or 0)
                body = await reader.readexactly(length) if length else b""
                up_writer.write(head + body)
                await up_writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            up_writer.close()
            await asyncio.gather(answering, return_exceptions=True)


def _api_kind(path: str) -> str:
    """``/hub/api/users/alice/server`` → ``users/*/server``: one name per kind of call."""
    parts = path.split("/hub/api/", 1)[-1].strip("/").split("/")
    if parts[:1] == ["users"] and len(parts) > 1:
        parts[1] = "*"
    return "/".join(parts) or "/"


# -- figures -------------------------------------------------------------------------------------


def spread(values: Sequence[float], unit: str, digits: int = 1) -> str:
    """``median [min-max] unit``; ``-`` when there is nothing."""
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}] {unit}"


@dataclass
class ToolRun:
    name: str
    process: subprocess.Popen[bytes]
    relay: CountingRelay
    users: list[str]
    busy: list[str]
    rss: list[float] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0


def _tree_cpu(pid: int) -> float:
    with suppress(psutil.Error):
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        return float(times.user + times.system)
    return 0.0


def _rss_mb(pid: int) -> float | None:
    with suppress(psutil.Error):
        return float(psutil.Process(pid).memory_info().rss) / 1e6
    return None


# -- side by side --------------------------------------------------------------------------------


async def prepare_server(hub: Hub, name: str, *, busy: bool) -> float:
    """A kernel in the user's server: busy in a silent cell, or having run ``x = 1``; its websocket
    closed either way. Returns the time of the bench's last contact (the idle deadline counts from it)."""
    async with hub.client() as client:
        routes = (await client.get("proxy")).json()
    route = next(r for spec, r in routes.items() if (r.get("data") or {}).get("user") == name)
    spec = next(spec for spec, r in routes.items() if r is route)
    async with Connection(str(route["target"]).rstrip("/") + spec, token=hub.admin_token) as conn:
        kernel_id = await start_kernel(conn, "python3")
        async with KernelSession(conn, kernel_id) as ks:
            if not busy:
                await ks.execute("x = 1")
            else:
                cell = asyncio.create_task(ks.execute("import time\ntime.sleep(10**6)"))
                for _ in range(200):
                    kernel = await conn.get(f"api/kernels/{kernel_id}")
                    if kernel["execution_state"] == "busy":
                        break
                    await asyncio.sleep(0.1)
                cell.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await cell
    return time.time()


def _start_tool(name: str, url: str, token: str, timeout_s: float, cull_every: float | None, workdir: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": token}
    if name == "lamplighter":
        argv = [str(Path(sys.executable).with_name("lamplighter")), "hub", "--hub-url", url,
                "--idle-timeout", f"{timeout_s:g}s", "--journal", str(workdir / "journal.sqlite3")]  # fmt: skip
        if cull_every is not None:
            argv += ["--cull-every", f"{cull_every:g}s"]
    else:
        argv = [sys.executable, "-m", "jupyterhub_idle_culler", f"--url={url.rstrip('/')}",
                f"--timeout={int(timeout_s)}"]  # fmt: skip
        if cull_every is not None:
            argv.append(f"--cull-every={int(cull_every)}")
    with (workdir / f"{name}.log").open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def side_by_side(args: argparse.Namespace, workdir: Path) -> None:
    per_tool = max(2, args.servers // 2)
    n_busy = max(1, per_tool // 2)
    timeout_s = float(args.timeout)
    print(
        f"\nside by side: {per_tool} real servers per tool ({per_tool - n_busy} idle, {n_busy} busy in a "
        f"silent cell), idle timeout {timeout_s:g} s, hub activity intervals lowered to 1 s"
    )
    # A server checks access:servers against its own user or server: a !group= filter is refused there.
    own = [f"access:servers!user=ll-{i}" for i in range(per_tool)]
    roles = {
        "lamplighter": [f"{s}!group=ll" for s in _SCOPES] + own + ["proxy"],
        "culler": [f"{s}!group=cu" for s in _SCOPES],
    }
    with running_hub(workdir / "side", spawner="simple", roles=roles) as hub:
        users: dict[str, list[str]] = {}
        busy: dict[str, list[str]] = {}
        async with hub.client() as client:
            for group in ("ll", "cu"):
                answer = await client.post(f"groups/{group}")
                assert answer.status_code in (201, 409), answer.text
        for tool, group in (("lamplighter", "ll"), ("culler", "cu")):
            users[tool] = [f"{group}-{i}" for i in range(per_tool)]
            busy[tool] = users[tool][:n_busy]
            await create_users(hub, users[tool], group)
        everyone = users["lamplighter"] + users["culler"]
        began = time.monotonic()
        ready = await start_servers(hub, everyone, concurrency=4, budget_s=600)
        assert sorted(ready) == sorted(everyone), "not every server started"
        # Interleaved, so neither half is set up first: the deadlines fall together.
        order = [u for pair in zip(users["lamplighter"], users["culler"], strict=True) for u in pair]
        last_contact = {}
        for name in order:
            is_busy = any(name in b for b in busy.values())
            last_contact[name] = await prepare_server(hub, name, busy=is_busy)
        print(f"  set up in {time.monotonic() - began:.0f} s; load average {os.getloadavg()[0]:.1f}")

        hub_port = int(hub.api.split(":")[2].split("/")[0])
        runs: dict[str, ToolRun] = {}
        for tool in TOOLS:
            relay = CountingRelay(hub_port)
            port = await relay.start()
            url = f"http://127.0.0.1:{port}/hub/api/"
            process = _start_tool(tool, url, hub.tokens[tool], timeout_s, args.cull_every, workdir)
            runs[tool] = ToolRun(tool, process, relay, users[tool], busy[tool])
        await asyncio.sleep(0)
        for run in runs.values():
            run.cpu_start = _tree_cpu(run.process.pid)
        started = time.monotonic()
        stop_at: dict[str, float] = {}  # first seen stopping (or gone): the tool's DELETE got in
        gone_at: dict[str, float] = {}  # first seen gone: the hub's own stop done
        hold_s = args.hold if args.hold is not None else 3 * timeout_s + 20
        next_sample = 0.0
        async with hub.client() as client:
            while time.monotonic() - started < hold_s:
                states = await server_states(client)
                now = time.time()
                for name in everyone:
                    model = states.get(name)
                    if name not in stop_at and (model is None or model.get("pending") == "stop"):
                        stop_at[name] = now
                    if name not in gone_at and model is None:
                        gone_at[name] = now
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + 1.0
                    for run in runs.values():
                        rss = _rss_mb(run.process.pid)
                        if rss is not None:
                            run.rss.append(rss)
                await asyncio.sleep(0.25)
        elapsed = time.monotonic() - started
        for run in runs.values():
            run.cpu_end = _tree_cpu(run.process.pid)
            run.process.send_signal(signal.SIGTERM)
        for run in runs.values():
            with suppress(subprocess.TimeoutExpired):
                run.process.wait(30)
            _end(run.process)
            await run.relay.close()

    print(f"  watched for {elapsed:.0f} s after both tools started (--hold); requests via a counting relay")
    header = f"  {'':40}{'lamplighter hub':>32}{'jupyterhub-idle-culler':>32}"
    print(header)
    rows: dict[str, dict[str, str]] = {}
    for tool, run in runs.items():
        idle = [u for u in run.users if u not in run.busy]
        asked = [stop_at[u] - (last_contact[u] + timeout_s) for u in idle if u in stop_at]
        lags = [gone_at[u] - (last_contact[u] + timeout_s) for u in idle if u in gone_at]
        kept = [u for u in idle if u not in stop_at]
        wrongly = [u for u in run.busy if u in stop_at]
        per_hour = run.relay.total / elapsed * 3600
        cpu_h = (run.cpu_end - run.cpu_start) / elapsed * 3600
        rows[tool] = {
            "idle stopped": f"{len(idle) - len(kept)} of {len(idle)}",
            "stop asked, after the deadline": spread(asked, "s"),
            "server gone, after the deadline": spread(lags, "s"),
            "server gone, worst": f"{max(lags):.1f} s" if lags else "-",
            "busy servers wrongly stopped": f"{len(wrongly)} of {len(run.busy)}",
            "hub API requests per hour": f"{per_hour:.0f}/h ({run.relay.total} in {elapsed:.0f} s)",
            "service RSS, median [range]": spread(run.rss, "MB"),
            "service CPU per hour": f"{cpu_h:.1f} s/h",
        }
        calls = ", ".join(f"{k} {v}" for k, v in sorted(run.relay.counts.items()))
        rows[tool]["hub API calls"] = calls
    for label in rows["lamplighter"]:
        if label == "hub API calls":
            continue
        print(f"  {label:40}{rows['lamplighter'][label]:>32}{rows['culler'][label]:>32}")
    for tool in TOOLS:
        print(f"  {tool} hub API calls: {rows[tool]['hub API calls']}")
    with Journal(workdir / "journal.sqlite3") as journal:
        decided = [
            float(e.detail["decided_after_s"])
            for e in journal.events(kind="action")
            if e.summary.startswith("stop ") and e.detail.get("decided_after_s") is not None
        ]
    print(f"  lamplighter decided after the deadline (its journal): {spread(decided, 's', 2)}")
    print(
        "  'after the deadline': from the bench's last contact with the server + the timeout (an upper"
        " bound on the real deadline); stopping/gone as the hub shows it, polled every 0.25 s"
    )
    print("  targets: 0 busy servers stopped; lamplighter decides within 1 s of each deadline")


# -- scale ---------------------------------------------------------------------------------------


@asynccontextmanager
async def running_responder() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "hub_standins.py"), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    url = f"http://127.0.0.1:{json.loads(line)['port']}"
    try:
        yield url
    finally:
        process.terminate()
        await process.wait()


async def responder_counts(url: str) -> Counter[str]:
    async with httpx.AsyncClient() as client:
        return Counter((await client.get(f"{url}/_counts")).json())


def _stand_in_names(start: int, stop: int) -> list[str]:
    """One in ten busy (a silent cell), the rest split between recently active and idle."""
    kinds = ("busy", "active", "idle", "active", "idle", "active", "idle", "active", "idle", "active")
    return [f"{kinds[i % 10]}-{i:05d}" for i in range(start, stop)]


async def lamplighter_pass(
    hub: Hub, workdir: Path, size: int, responder: str, steady_s: float
) -> dict[str, Any]:
    """The first full pass (list, probe and decide every server) and one re-list, in this process."""
    settings = load_settings(
        {
            "hub_url": hub.api,
            "hub_token": hub.tokens["lamplighter"],
            "journal": str(workdir / f"scale-{size}.sqlite3"),
            "idle_timeout": "1h",
        },
        env={},
    )
    decided: set[str] = set()
    all_decided = asyncio.Event()
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    cpu_before = sum(proc.cpu_times()[:2])
    before = await responder_counts(responder)
    async with Connection(hub.api, token=hub.tokens["lamplighter"], timeout_s=120) as conn:
        api = HubApi(conn, page_size=settings.api_page_size)
        with Journal(settings.journal) as journal:

            def on_decision(server: Any, decision: Any) -> None:
                decided.add(server.label)
                if len(decided) >= size:
                    all_decided.set()

            fleet = HubFleet(settings, api, journal, token=hub.tokens["lamplighter"], on_decision=on_decision)
            began = time.monotonic()
            await fleet.list_once()
            listed = time.monotonic()
            list_calls = api.requests
            watched = len(fleet.watched)
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(all_decided.wait(), timeout=max(300.0, size * 0.1))
            passed = time.monotonic()
            probes = await responder_counts(responder) - before
            rss_after = proc.memory_info().rss
            cpu_pass = sum(proc.cpu_times()[:2]) - cpu_before
            # Steady state: the agents probe each server at its own next check (probe_interval, 1 min
            # at the 1 h timeout; busy_recheck, 30 s, for a busy one), no list meanwhile.
            steady_before = await responder_counts(responder)
            cpu_steady_before = sum(proc.cpu_times()[:2])
            await asyncio.sleep(steady_s)
            steady_requests = sum((await responder_counts(responder) - steady_before).values())
            cpu_steady = sum(proc.cpu_times()[:2]) - cpu_steady_before
            calls_before = api.requests
            relist_began = time.monotonic()
            await fleet.list_once()
            relist_s = time.monotonic() - relist_began
            relist_calls = api.requests - calls_before
            stopped = sum(1 for e in journal.events(kind="action") if e.summary.startswith("stop "))
            fleet.request_exit()
            await fleet.close()
    return {
        "watched": watched,
        "decided": len(decided),
        "list_s": listed - began,
        "pass_s": passed - began,
        "list_calls": list_calls,
        "server_calls": sum(probes.values()),
        "relist_s": relist_s,
        "relist_calls": relist_calls,
        "rss_mb": (rss_after - rss_before) / 1e6,
        "cpu_s": cpu_pass,
        "stopped": stopped,
        "steady_rps": steady_requests / steady_s if steady_s else 0.0,
        "steady_cpu": cpu_steady / steady_s if steady_s else 0.0,
    }


async def culler_pass(hub: Hub) -> dict[str, Any]:
    """jupyterhub-idle-culler's own pass over the same hub, in this process, its requests counted."""
    from jupyterhub_idle_culler import cull_idle
    from tornado.httpclient import AsyncHTTPClient

    calls = 0
    original = AsyncHTTPClient.fetch

    def counted(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, request, *args, **kwargs)

    AsyncHTTPClient.fetch = counted  # type: ignore[method-assign]
    try:
        began = time.monotonic()
        await cull_idle(
            url=hub.api.rstrip("/"),
            api_token=hub.tokens["culler"],
            inactive_limit=3600,
            logger=logging.getLogger("culler"),
            concurrency=10,
        )
        return {"pass_s": time.monotonic() - began, "calls": calls}
    finally:
        AsyncHTTPClient.fetch = original  # type: ignore[method-assign]


async def scale(args: argparse.Namespace, workdir: Path) -> None:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(
        f"\nscale: stand-in servers (bench/hub_standins.py), sizes {sizes}, setup budget {args.setup_budget:g} s"
    )
    roles = {
        "lamplighter": [*_SCOPES, "access:servers", "proxy"],
        "culler": list(_SCOPES),
    }
    async with running_responder() as responder:
        with running_hub(
            workdir / "scale", spawner="hub_standins.StandinSpawner", roles=roles, responder=responder
        ) as hub:
            have = 0
            setup_left = args.setup_budget
            results: list[tuple[int, dict[str, Any], dict[str, Any], float]] = []
            for size in sizes:
                names = _stand_in_names(have, size)
                began = time.monotonic()
                await create_users(hub, names)
                users_s = time.monotonic() - began
                if args.setup == "api":
                    ready = await start_servers(hub, names, concurrency=32, budget_s=setup_left)
                else:
                    await asyncio.to_thread(register_running, hub, names, responder)
                    count = await wait_ready(hub, size, setup_left)
                    ready = names[: max(0, count - have)]
                took = time.monotonic() - began
                setup_left -= took
                have += len(ready)
                print(
                    f"  {have} servers ready (+{len(ready)} in {took:.0f} s: {len(ready) / took:.0f}/s, "
                    f"{'started through the hub API' if args.setup == 'api' else 'restored by a hub restart'}; "
                    f"the users' creation through the API {users_s:.0f} s of it)"
                )
                if len(ready) < len(names):
                    print(f"  setup budget spent: measuring at {have} servers instead of {size}")
                ours = await lamplighter_pass(hub, workdir, have, responder, args.steady)
                theirs = await culler_pass(hub)
                results.append((have, ours, theirs, took))
                if len(ready) < len(names):
                    break
    print(
        f"  {'servers':>8} {'ll first pass':>14} {'ll list':>9} {'hub calls':>10} {'server calls':>13}"
        f" {'ll re-list':>11} {'re-list calls':>14} {'culler pass':>12} {'culler calls':>13}"
        f" {'ll RSS':>9} {'ll CPU':>8} {'steady probes':>14} {'steady CPU':>11}"
    )
    for have, ours, theirs, _ in results:
        print(
            f"  {have:>8} {ours['pass_s']:>12.1f} s {ours['list_s']:>7.1f} s {ours['list_calls']:>10}"
            f" {ours['server_calls']:>13} {ours['relist_s']:>9.2f} s {ours['relist_calls']:>14}"
            f" {theirs['pass_s']:>10.2f} s {theirs['calls']:>13} {ours['rss_mb']:>6.0f} MB {ours['cpu_s']:>6.1f} s"
            f" {ours['steady_rps']:>10.0f} r/s {ours['steady_cpu'] * 100:>9.0f} %"
        )
        if ours["decided"] < have:
            print(f"  {have}: only {ours['decided']} of {have} servers decided in the pass's time limit")
        if ours["stopped"]:
            print(
                f"  {have}: {ours['stopped']} stops journaled (none expected: every server was used < 1 h ago)"
            )
    print(
        "  first pass: list + every server probed once + decided; re-list: what each later cull_every costs"
        " (lamplighter's agents probe each server at its own deadline, not per pass)"
    )
    print(
        f"  ll RSS / CPU: this process's growth and CPU over the first pass; steady: server requests per"
        f" second and CPU (% of one core) over the {args.steady:g} s after it, no list meanwhile"
    )
    print("  target: a 10,000-server pass within one cull_every (5 min at the 1 h default timeout)")


async def main_async(args: argparse.Namespace, workdir: Path) -> None:
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other work skews figures)"
    )
    if args.part in ("all", "side"):
        await side_by_side(args, workdir)
    if args.part in ("all", "scale"):
        await scale(args, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("all", "side", "scale"), default="all")
    parser.add_argument("--servers", type=int, default=8, help="real servers, split between the two tools")
    parser.add_argument("--timeout", type=float, default=20, help="idle timeout of both tools, seconds")
    parser.add_argument(
        "--cull-every", type=float, default=None, help="both tools' cull_every (default: each its own)"
    )
    parser.add_argument(
        "--hold", type=float, default=None, help="seconds to watch (default 3 x timeout + 20)"
    )
    parser.add_argument("--sizes", default="100,1000,10000", help="stand-in fleet sizes, comma-separated")
    parser.add_argument("--setup-budget", type=float, default=900, help="seconds allowed to start stand-ins")
    parser.add_argument(
        "--setup",
        choices=("api", "restore"),
        default="restore",
        help="stand-ins started through the hub API one by one, or registered in bulk and restored by a hub restart",
    )
    parser.add_argument("--steady", type=float, default=60, help="seconds of steady state after each pass")
    parser.add_argument("--quick", action="store_true", help="smallest run (the smoke test)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the hub's and tools' logs here")
    args = parser.parse_args()
    if args.quick:
        args.timeout, args.hold, args.sizes = min(args.timeout, 8), args.hold or 22, "20"
        args.steady = min(args.steady, 2)
    logging.basicConfig(level=logging.ERROR)
    if args.keep is not None:
        asyncio.run(main_async(args, args.keep.resolve()))
        return
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
