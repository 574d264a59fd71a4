"""A real JupyterHub for the tests, behind a real configurable-http-proxy, all on 127.0.0.1.

The proxy is :func:`tests.chp.running_proxy` (it binds port 0 and reports its ports); the hub is told
to use it (``should_start = False``). The hub itself cannot bind port 0 (it hands its own URL to every
server it spawns), so it gets a port the kernel just gave out and is started again on another if
that one was taken meanwhile. Servers are real ``jupyterhub-singleuser`` processes
(SimpleLocalProcessSpawner, ``--allow-root`` when the tests run as root).

Lowered from the hub's defaults so that a test sees activity within seconds rather than 5 minutes:
the proxy's activity is read every second (``last_activity_interval``), a server reports its own
every second (``JUPYTERHUB_ACTIVITY_INTERVAL``), and updates are kept at 1 s resolution
(``activity_resolution``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamplighter.hub.fleet import HubFleet
from lamplighter.journal import Journal
from lamplighter.model import Decision
from lamplighter.platforms.jupyterhub import HubApi, HubServer
from lamplighter.remote import Connection
from lamplighter.settings import Settings, load_settings
from tests.chp import running_proxy
from tests.waiting import wait_until

__all__ = ["Hub", "hub", "hub_settings", "hub_users", "new_user", "running_fleet", "running_hub"]

#: What the lamplighter service's role gets in the tests: the README's list.
SERVICE_SCOPES = [
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
    "access:servers",
    "proxy",
    "read:users:groups",  # only for group_idle_timeouts
]


@dataclass
class Hub:
    api: str  # http://127.0.0.1:PORT/hub/api/
    public: str  # the proxy's URL
    service_token: str  # the lamplighter service's token (SERVICE_SCOPES)
    admin_token: str  # the tests' own token: creates users, starts and stops servers
    log: Path
    nodelete_token: str  # a service like lamplighter's without delete:servers: every stop is refused
    usercull_token: str = ""  # lamplighter's scopes plus admin:users (cull_users)
    restart: Callable[[Callable[[], None]], None] | None = None  # see running_hub
    tls: ssl.SSLContext | None = None  # the client certificate of a hub with internal SSL

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.admin_token}"}
        return httpx.request(
            method, self.api + path, headers=headers, timeout=30, verify=self.tls or True, **kwargs
        )

    def user(self, name: str) -> dict[str, Any]:
        answer = self.call("GET", f"users/{name}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def server(self, name: str, server_name: str = "") -> dict[str, Any] | None:
        found = self.user(name).get("servers", {}).get(server_name)
        return dict(found) if found else None

    def start(self, name: str, server_name: str = "", *, timeout_s: float = 60) -> dict[str, Any]:
        """Create the user if needed, start the server, and wait until the hub says it is ready."""
        answer = self.call("POST", f"users/{name}")
        assert answer.status_code in (201, 409), answer.text
        path = f"users/{name}/servers/{server_name}" if server_name else f"users/{name}/server"
        answer = self.call("POST", path)
        assert answer.status_code in (201, 202, 400), answer.text

        def ready() -> dict[str, Any] | None:
            model = self.server(name, server_name)
            return model if model and model.get("ready") and not model.get("pending") else None

        return wait_until(ready, timeout_s=timeout_s, what=f"{name}/{server_name} to be ready")

    def stop(self, name: str, server_name: str = "") -> None:
        path = f"users/{name}/servers/{server_name}" if server_name else f"users/{name}/server"
        answer = self.call("DELETE", path)
        assert answer.status_code in (202, 204, 400), answer.text
        wait_until(lambda: self.server(name, server_name) is None, timeout_s=30, what=f"{name} to stop")

    def set_env(self, name: str, env: dict[str, str]) -> None:
        """More environment for the user's servers from their next start on (the pre-spawn hook reads it)."""
        (self.log.parent / f"env-{name}.json").write_text(json.dumps(env))

    def own_url(self, name: str, server_name: str = "") -> str:
        """The server's own address from the routing table (what the service probes)."""
        routes = self.call("GET", "proxy").json()
        for spec, route in routes.items():
            data = route.get("data") or {}
            if data.get("user") == name and (data.get("server_name") or "") == server_name:
                return str(route["target"]).rstrip("/") + spec
        raise AssertionError(f"no route for {name}/{server_name}: {routes}")


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CONFIG = """\
import sys
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
c.JupyterHub.allow_named_servers = True
c.Authenticator.admin_users = {{"lladmin"}}  # an admin with no server, for cull_admin_users
c.JupyterHub.bind_url = {public!r}
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.db_url = "sqlite:///{workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.pid_file = "{workdir}/hub.pid"
c.JupyterHub.last_activity_interval = 1
c.JupyterHub.activity_resolution = 1
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = {proxy_api!r}
c.SimpleLocalProcessSpawner.home_dir_template = "{workdir}/home/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.Spawner.environment = {{"JUPYTERHUB_ACTIVITY_INTERVAL": "1"}}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
# The server's own token may stop its own server through the hub (the in-server extension's stop).
c.Spawner.server_token_scopes = [
    "users:activity!user", "access:servers!server", "delete:servers!server", "read:servers!server",
]


def _pre_spawn(spawner):
    import json, os
    # A test may give one user's server more environment: {workdir}/env-NAME.json (Hub.set_env).
    extra = os.path.join({workdir!r}, "env-" + spawner.user.name + ".json")
    if os.path.exists(extra):
        with open(extra) as f:
            spawner.environment = dict(spawner.environment, **json.load(f))
    # Users named ext* get the lamplighter extension in their server, with a short idle timeout.
    if not spawner.user.name.startswith("ext"):
        return
    config = os.path.join({workdir!r}, "config-" + spawner.user.name)
    os.makedirs(config, exist_ok=True)
    with open(os.path.join(config, "jupyter_server_config.json"), "w") as f:
        json.dump({{"ServerApp": {{"jpserver_extensions": {{"lamplighter": True}}}},
                   "Lamplighter": {{"idle_timeout": "6s", "journal": os.path.join(config, "journal.sqlite3")}}}}, f)
    spawner.environment = dict(spawner.environment, JUPYTER_CONFIG_DIR=config)


c.Spawner.pre_spawn_hook = _pre_spawn
c.JupyterHub.services = [
    {{"name": "lamplighter", "api_token": {service_token!r}}},
    {{"name": "tester", "api_token": {admin_token!r}}},
    {{"name": "nodelete", "api_token": {nodelete_token!r}}},
    {{"name": "usercull", "api_token": {usercull_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "lamplighter", "scopes": {scopes!r}, "services": ["lamplighter"]}},
    {{"name": "nodelete", "scopes": {nodelete_scopes!r}, "services": ["nodelete"]}},
    {{"name": "usercull", "scopes": {scopes!r} + ["admin:users"], "services": ["usercull"]}},
    {{"name": "tester", "scopes": ["admin:users", "admin:servers", "admin:groups", "access:servers", "proxy", "tokens"], "services": ["tester"]}},
]
"""


def _end_servers_of(hub_api: str) -> None:
    """Kill the servers a hub spawned (found by the hub API URL in their environment): with
    ``cleanup_servers=False`` they outlive the hub, and a failed test would leave them running."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.environ().get("JUPYTERHUB_API_URL", "").rstrip("/") == hub_api.rstrip("/"):
                proc.kill()
        except (psutil.Error, OSError):
            continue


def _end(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextmanager
def running_hub(workdir: Path, *, cleanup_servers: bool = True, internal_ssl: bool = False) -> Iterator[Hub]:
    """A hub (and its proxy) until the block ends. ``cleanup_servers=False`` keeps the servers running
    across :meth:`Hub.restart`, as a production hub is configured. ``internal_ssl``: the hub's API and
    its servers speak https and want a client certificate (the hub's own, under
    ``workdir/internal-ssl``, is what :attr:`Hub.tls` shows)."""
    certs = workdir / "internal-ssl"
    extra_config = (
        f"c.JupyterHub.internal_ssl = True\nc.JupyterHub.internal_certs_location = {str(certs)!r}\n"
        if internal_ssl
        else ""
    )

    def client_tls() -> ssl.SSLContext | None:
        if not internal_ssl or not (certs / "hub-internal" / "hub-internal.key").exists():
            return None
        context = ssl.create_default_context(cafile=str(certs / "hub-ca_trust.crt"))
        context.load_cert_chain(
            certs / "hub-internal" / "hub-internal.crt", certs / "hub-internal" / "hub-internal.key"
        )
        return context

    workdir.mkdir(parents=True, exist_ok=True)
    service_token, admin_token, nodelete_token, usercull_token = (secrets.token_hex(16) for _ in range(4))
    singleuser = str(Path(sys.executable).with_name("jupyterhub-singleuser"))
    args = ["--allow-root"] if os.geteuid() == 0 else []
    with running_proxy(workdir) as proxy:
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": proxy.token}
        process: subprocess.Popen[bytes] | None = None
        api = ""
        log = workdir / "hub.log"

        def launch(api: str) -> tuple[subprocess.Popen[bytes], bool]:
            with log.open("ab") as out:
                started = subprocess.Popen(
                    [sys.executable, "-m", "jupyterhub", "-f", str(workdir / "jupyterhub_config.py")],
                    cwd=workdir,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )

            def up() -> bool | str:
                if started.poll() is not None:
                    return "exited"
                try:
                    return httpx.get(api, timeout=2, verify=client_tls() or True).status_code == 200
                except (httpx.HTTPError, OSError, ssl.SSLError):
                    return False

            # A hub's first start (database, proxy sync, spawned-server checks) took over 60 s with three
            # hubs starting at once on 2 busy cores; the wait ends as soon as it answers.
            return started, wait_until(up, timeout_s=180, what="the hub to answer") is True

        try:
            for _ in range(5):
                port = _kernel_port()
                config = _CONFIG.format(
                    public=proxy.url,
                    port=port,
                    workdir=str(workdir),
                    proxy_api=proxy.api,
                    singleuser=singleuser,
                    args=args,
                    service_token=service_token,
                    admin_token=admin_token,
                    scopes=SERVICE_SCOPES,
                    nodelete_token=nodelete_token,
                    nodelete_scopes=[x for x in SERVICE_SCOPES if x != "delete:servers"],
                    usercull_token=usercull_token,
                )
                config += f"c.JupyterHub.cleanup_servers = {cleanup_servers!r}\n" + extra_config
                (workdir / "jupyterhub_config.py").write_text(textwrap.dedent(config))
                scheme = "https" if internal_ssl else "http"
                api = f"{scheme}://127.0.0.1:{port}/hub/api/"
                process, ready = launch(api)
                if ready:
                    break
                # Exited: its port was taken between our bind and its own; try another.
                process = None
            else:
                raise AssertionError(f"the hub did not start: {log.read_text()[-3000:]}")

            def restart(down: Callable[[], None] = lambda: None) -> None:
                """Stop the hub, call ``down`` while it is away, start it again on the same port."""
                nonlocal process
                if process is not None:
                    _end(process)
                process = None
                down()
                process, ready = launch(api)
                if not ready:
                    raise AssertionError(f"the hub did not start again: {log.read_text()[-3000:]}")

            yield Hub(
                api,
                proxy.url,
                service_token,
                admin_token,
                log,
                nodelete_token,
                usercull_token,
                restart,
                client_tls(),
            )
        finally:
            if process is not None:
                _end(process)
            if not cleanup_servers and api:
                _end_servers_of(api)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One hub for the whole session (each test uses users of its own: :func:`hub_users`)."""
    with running_hub(tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def hub_users(hub: Hub) -> Iterator[list[str]]:
    """The user names a test adds; every server they still have is stopped afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        if hub.call("GET", f"users/{name}").status_code == 404:
            continue  # deleted by the test (cull_users)
        for server_name in list(hub.user(name).get("servers", {})):
            hub.stop(name, server_name)


def new_user(users: list[str], prefix: str = "u") -> str:
    """A fresh user name, added to ``users`` (the :func:`hub_users` list) so that its servers are stopped after."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    users.append(name)
    return name


def hub_settings(hub: Hub, tmp_path: Path, **overrides: Any) -> Settings:
    """``lamplighter hub``'s settings for this hub: its service token, a journal in ``tmp_path``, 1 s passes."""
    flags = {
        "hub_url": hub.api,
        "hub_token": hub.service_token,
        "journal": str(tmp_path / "journal.sqlite3"),
        "cull_every": "1s",
        **overrides,
    }
    return load_settings(flags, env={})


@asynccontextmanager
async def running_fleet(
    hub: Hub,
    settings: Settings,
    decisions: list[tuple[HubServer, Decision]] | None = None,
    *,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[HubFleet]:
    """The fleet loop on this hub in the running event loop; ``decisions`` collects what it decided."""
    token = token or hub.service_token
    conn = Connection(hub.api, token=token, tls=tls)
    async with conn:
        with Journal(settings.journal) as journal:
            fleet = HubFleet(
                settings,
                HubApi(conn, page_size=settings.api_page_size),
                journal,
                token=token,
                on_decision=(lambda s, d: decisions.append((s, d))) if decisions is not None else None,
                tls=tls,
            )
            task = asyncio.create_task(fleet.run())
            try:
                yield fleet
            finally:
                fleet.request_exit()
                await asyncio.wait_for(task, timeout=30)
