"""Studio Classic: the JupyterServer app culls its idle KernelGateway apps, never running work, never itself.

The pure part (which app a kernel or image terminal runs on, each app's verdict) is table-tested; the
rest runs against the SageMaker emulator with ``classic=True``: a real jupyter_server as the
JupyterServer app, whose kernels and image terminals create real KernelGateway apps through boto3, and
``lamplighter watch`` (or the in-server extension) in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamplighter.errors import ConfigError
from lamplighter.journal import Journal
from lamplighter.model import Action, KernelInfo, Memory, TerminalInfo
from lamplighter.remote.connection import Connection
from lamplighter.remote.session import KernelSession
from lamplighter.sagemaker.classic import (
    ClassicKernel,
    InstanceTimeouts,
    KernelGatewayApp,
    decide_app,
    image_terminal_key,
    place,
)
from lamplighter.settings import load_settings
from tests.emulators.sagemaker import EmulatedApp, SageMakerEmulator, aws_env
from tests.emulators.studio_classic import IMAGES, MARK
from tests.waiting import wait_until

UTC = timezone.utc
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DS = IMAGES[0][0]  # the Data Science image's ARN
KERNEL = f"python3{MARK}{DS}"


# -- pure: placing and judging ---------------------------------------------------------------------


def _app(name: str, instance: str = "ml.t3.medium", arn: str = DS) -> KernelGatewayApp:
    return KernelGatewayApp(app_name=name, environment_arn=arn, instance_type=instance)


def _kernel(kid: str, app: str | None, state: str = "idle", at: datetime = T0) -> ClassicKernel:
    return ClassicKernel(KernelInfo(kid, KERNEL, state, at, 0), app, None)


def test_image_terminals_are_named_after_image_and_instance() -> None:
    assert image_terminal_key(f"{DS}__1__ml.g4dn.xlarge") == (DS, "ml.g4dn.xlarge")
    assert image_terminal_key(f"{DS}__2__ml.t3.medium__extra") == (DS, "ml.t3.medium")
    assert image_terminal_key("1") is None  # a system terminal runs on the free instance
    assert image_terminal_key("arn:broken") is None


def test_kernels_go_to_their_app_and_image_terminals_to_the_first_match() -> None:
    apps = [_app("a"), _app("b", "ml.g4dn.xlarge"), _app("c", "ml.g4dn.xlarge")]
    kernels = [_kernel("k1", "a"), _kernel("k2", "c"), _kernel("k3", None), _kernel("k4", "gone")]
    terminals = [
        TerminalInfo(f"{DS}__1__ml.g4dn.xlarge", T0),
        TerminalInfo("1", T0),
        TerminalInfo(f"{IMAGES[1][0]}__1__ml.t3.medium", T0),
    ]
    placed = place(apps, kernels, terminals)
    assert [k.id for k in placed["a"].kernels] == ["k1"]
    assert [k.id for k in placed["c"].kernels] == ["k2"]
    assert [t.name for t in placed["b"].terminals] == [f"{DS}__1__ml.g4dn.xlarge"]
    assert not placed["a"].terminals and not placed["c"].terminals


def test_instance_timeouts_take_the_shortest_match_and_refuse_bad_entries() -> None:
    timeouts = InstanceTimeouts.parse(
        timedelta(hours=1), ["ml.g*=20m", "ml.g5.*=10m", "ml.t3.*=3h"], setting="instance_idle_timeouts"
    )
    assert timeouts.for_instance("ml.g5.xlarge") == (timedelta(minutes=10), "ml.g5.*")
    assert timeouts.for_instance("ml.g4dn.xlarge") == (timedelta(minutes=20), "ml.g*")
    assert timeouts.for_instance("ml.t3.medium") == (timedelta(hours=3), "ml.t3.*")
    assert timeouts.for_instance("ml.m5.large") == (timedelta(hours=1), None)
    with pytest.raises(ConfigError, match="PATTERN=DURATION"):
        InstanceTimeouts.parse(timedelta(hours=1), ["ml.g*"], setting="instance_idle_timeouts")


def _verdict(
    app: KernelGatewayApp,
    kernels: tuple[ClassicKernel, ...] = (),
    terminals: tuple[TerminalInfo, ...] = (),
    *,
    now: datetime,
    created: datetime = T0,
    **settings: Any,
) -> Any:
    base = load_settings({"idle_timeout": "1h", **settings}, env={})
    timeouts = InstanceTimeouts.parse(base.idle_timeout, base.instance_idle_timeouts, setting="x")
    return decide_app(
        app,
        place([app], kernels, terminals)[app.app_name],
        server_target="http://127.0.0.1:8888/jupyter/default/",
        created_at=created,
        memory=Memory(),
        settings=base,
        timeouts=timeouts,
        now=now,
        startup_grace=base.startup_grace,
    )


def test_an_app_that_never_had_a_kernel_is_measured_from_its_creation() -> None:
    # The AWS extension's issue #7: such apps were never deleted (+100 % cost).
    app = _app("empty")
    before = _verdict(app, now=T0 + timedelta(minutes=59))
    assert before.action is Action.KEEP and before.stop_at == T0 + timedelta(hours=1)
    after = _verdict(app, now=T0 + timedelta(hours=1, seconds=1))
    assert after.action is Action.STOP and after.idle_since == T0
    graced = _verdict(app, now=T0 + timedelta(hours=1, seconds=1), startup_grace="2h")
    assert graced.action is Action.KEEP and graced.stop_at == T0 + timedelta(hours=2)


def test_a_busy_kernel_keeps_its_app_however_long_it_was_silent() -> None:
    app = _app("busy")
    busy = (_kernel("k1", "busy", "busy", at=T0),)
    verdict = _verdict(app, busy, now=T0 + timedelta(days=2))
    assert verdict.action is Action.KEEP and verdict.reason.startswith("in use: kernel k1")


def test_gpu_apps_get_their_shorter_timeout() -> None:
    gpu, cpu = _app("gpu", "ml.g4dn.xlarge"), _app("cpu")
    idle = T0 + timedelta(minutes=30)
    later = T0 + timedelta(minutes=40)
    kwargs: dict[str, Any] = {"instance_idle_timeouts": "ml.g*=10m", "startup_grace": "0s"}
    g = _verdict(gpu, (_kernel("k", "gpu", at=idle),), now=later, **kwargs)
    c = _verdict(cpu, (_kernel("k", "cpu", at=idle),), now=later, **kwargs)
    assert g.action is Action.STOP and g.stop_at == idle + timedelta(minutes=10)
    assert "instance_idle_timeouts ml.g*" in g.reasons[-1]
    assert c.action is Action.KEEP and c.stop_at == idle + timedelta(hours=1)


def test_image_terminals_keep_their_app_only_with_keep_terminals() -> None:
    app = _app("term")
    terminal = (TerminalInfo(f"{DS}__1__ml.t3.medium", T0),)
    now = T0 + timedelta(hours=2)
    assert _verdict(app, terminals=terminal, now=now).action is Action.STOP
    kept = _verdict(app, terminals=terminal, now=now, keep_terminals="true")
    assert kept.action is Action.KEEP and "keep_terminals" in kept.reason
    # Output in the terminal is somebody working there: the app is kept for the idle timeout after it.
    typed = (TerminalInfo(terminal[0].name, now - timedelta(minutes=5)),)
    assert _verdict(app, terminals=typed, now=now).stop_at == now + timedelta(minutes=55)


# -- end to end: an emulated Studio Classic ---------------------------------------------------------


@pytest.fixture
def classic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SageMakerEmulator]:
    for name, value in aws_env("unused").items():
        monkeypatch.setenv(name, value)
    with SageMakerEmulator(tmp_path / "sagemaker", pending_s=0.05, deleting_s=0.1, classic=True) as sm:
        monkeypatch.setenv("LAMPLIGHTER_SAGEMAKER_ENDPOINT_URL", sm.endpoint_url)
        yield sm


def _jupyter_server_app(sm: SageMakerEmulator, extra_config: str = "") -> tuple[str, EmulatedApp]:
    domain = sm.add_domain()
    sm.add_user_profile(domain, "alice")
    sm.classic_config = extra_config
    sm.client().create_app(
        DomainId=domain, UserProfileName="alice", AppType="JupyterServer", AppName="default"
    )
    app = sm.app(domain, "JupyterServer", user_profile="alice")
    sm.wait_for(lambda: app.status() == "InService" and app.server is not None)
    return domain, app


def _kernel_gateway(sm: SageMakerEmulator, instance_type: str) -> EmulatedApp:
    return next(
        a for a in sm.iter_apps() if a.app_type == "KernelGateway" and a.instance_type == instance_type
    )


def _studio(app: EmulatedApp) -> httpx.Client:
    assert app.server is not None
    return httpx.Client(base_url=app.server.url, timeout=60)


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    # The server has no token (as in Studio): the _xsrf cookie of any page guards its POSTs.
    client.get("lamplighter-xsrf-probe")
    answer = client.post(path, json=body, headers={"X-XSRFToken": client.cookies.get("_xsrf") or ""})
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def test_emulated_classic_runs_kernels_and_image_terminals_on_kernel_gateway_apps(
    classic: SageMakerEmulator,
) -> None:
    _, server_app = _jupyter_server_app(classic)
    with _studio(server_app) as studio:
        specs = studio.get("api/kernelspecs").json()["kernelspecs"]
        assert KERNEL in specs and specs[KERNEL]["spec"]["metadata"]["sme_metadata"]["environment_arn"] == DS
        kernel = _post(studio, "api/kernels", {"name": KERNEL, "instance_type": "ml.g4dn.xlarge"})
        gpu = _kernel_gateway(classic, "ml.g4dn.xlarge")
        assert kernel["app_name"] == gpu.app_name and gpu.status() == "InService" and gpu.image_arn == DS
        _post(studio, "api/terminals", {"name": f"{DS}__1__ml.m5.large"})
        listed = {a["app_name"]: a for a in studio.get("sagemaker/api/apps").json()}
        assert set(listed) == {gpu.app_name, _kernel_gateway(classic, "ml.m5.large").app_name}
        assert listed[gpu.app_name]["instance_type"] == "ml.g4dn.xlarge"
        # Deleting the app takes its kernel with it, as losing the instance does.
        studio.delete(
            f"sagemaker/api/apps/{gpu.app_name}", headers={"X-XSRFToken": studio.cookies.get("_xsrf") or ""}
        ).raise_for_status()
        wait_until(lambda: studio.get("api/kernels").json() == [], timeout_s=20, what="the kernel to die")


def test_the_emulator_refuses_what_sagemaker_refuses(classic: SageMakerEmulator) -> None:
    domain = classic.add_domain()
    classic.add_user_profile(domain, "alice")
    client = classic.client()
    bad_specs = [
        {"InstanceType": "ml.t3.mega"},  # not an AppInstanceType
        {"InstanceType": "ml.t3.medium", "SageMakerImageArn": "datascience"},  # not an image ARN
    ]
    for spec in bad_specs:
        with pytest.raises(client.exceptions.ClientError, match="ValidationException"):
            client.create_app(
                DomainId=domain,
                UserProfileName="alice",
                AppType="KernelGateway",
                AppName="k",
                ResourceSpec=spec,  # type: ignore[typeddict-item]
            )
    with pytest.raises(client.exceptions.ClientError, match="AppName"):
        client.delete_app(
            DomainId=domain, UserProfileName="alice", AppType="KernelGateway", AppName="no_under"
        )


def _watch(sm: SageMakerEmulator, app: EmulatedApp, journal: Path, *args: str) -> subprocess.Popen[str]:
    assert app.server is not None
    env = {**os.environ, **aws_env(sm.endpoint_url)}
    argv = [
        sys.executable, "-m", "lamplighter", "watch", "--platform", "sagemaker",
        "--sagemaker-metadata", str(app.metadata_path), "--url", app.server.url,
        "--journal", str(journal), "--ignore-connections", *args,
    ]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _deletes(sm: SageMakerEmulator) -> list[dict[str, Any]]:
    with sm._lock:
        return [params for name, params in sm.calls if name == "DeleteApp"]


async def _used_once(url: str, kernel_id: str) -> None:
    """A notebook tab that ran one cell and was closed (a kernel no client opened stays 'starting')."""
    async with Connection(url) as conn, KernelSession(conn, kernel_id) as ks:
        assert (await ks.execute("1 + 1")).ok


async def _busy_kernel(url: str, kernel_id: str, started: asyncio.Event, stop: asyncio.Event) -> None:
    async with Connection(url) as conn, KernelSession(conn, kernel_id) as ks:
        run = asyncio.ensure_future(ks.execute("import time\nwhile True: time.sleep(0.2)"))
        started.set()
        await stop.wait()
        await conn.request("POST", f"api/kernels/{kernel_id}/interrupt")
        await asyncio.wait_for(run, 30)


def test_watch_in_a_jupyter_server_app_deletes_idle_kernel_gateway_apps_and_never_busy_ones(
    classic: SageMakerEmulator, tmp_path: Path
) -> None:
    _, server_app = _jupyter_server_app(classic)
    assert server_app.server is not None
    url = server_app.server.url
    with _studio(server_app) as studio:
        busy = _post(studio, "api/kernels", {"name": KERNEL, "instance_type": "ml.g5.xlarge"})
        idle = _post(studio, "api/kernels", {"name": KERNEL, "instance_type": "ml.g4dn.xlarge"})

        async def scenario() -> None:
            await _used_once(url, idle["id"])
            started, stop = asyncio.Event(), asyncio.Event()
            work = asyncio.create_task(_busy_kernel(url, busy["id"], started, stop))
            await started.wait()
            await asyncio.to_thread(wait_busy, studio, busy["id"])
            # Created after the busy kernel went quiet: when this app is due, so would the busy one be.
            await asyncio.to_thread(_post, studio, "api/terminals", {"name": f"{DS}__1__ml.m5.large"})
            watcher = _watch(
                classic, server_app, tmp_path / "j.sqlite3",
                "--idle-timeout", "1h", "--instance-idle-timeouts", "ml.g*=3s,ml.m5*=3s",
            )  # fmt: skip
            try:
                terminal_app = _kernel_gateway(classic, "ml.m5.large")
                idle_app = _kernel_gateway(classic, "ml.g4dn.xlarge")
                busy_app = _kernel_gateway(classic, "ml.g5.xlarge")
                await asyncio.to_thread(
                    wait_until,
                    lambda: terminal_app.status() == "Deleted" and idle_app.status() == "Deleted",
                    timeout_s=40,
                    what="the idle and the terminal-only KernelGateway apps to be deleted",
                )
                assert busy_app.status() == "InService", "a busy kernel's app was deleted"
                stop.set()
                await work
                await asyncio.to_thread(
                    wait_until,
                    lambda: busy_app.status() == "Deleted",
                    timeout_s=30,
                    what="the busy app, once done",
                )
            finally:
                watcher.send_signal(signal.SIGTERM)
                out, _ = watcher.communicate(timeout=30)
            assert server_app.status() == "InService", out
            assert {d["AppType"] for d in _deletes(classic)} == {"KernelGateway"}, out

        asyncio.run(scenario())
    with Journal(tmp_path / "j.sqlite3") as journal:
        actions = [e for e in journal.events(kind="action") if "KernelGateway/" in e.target]
    # One delete per app, each within a second and a half of its deadline (the AWS extension: 10 s passes).
    assert len(actions) == 3 and len({a.target for a in actions}) == 3
    for action in actions:
        assert action.detail["overshoot_s"] < 1.5, action.summary


def wait_busy(studio: httpx.Client, kernel_id: str) -> None:
    wait_until(
        lambda: studio.get(f"api/kernels/{kernel_id}").json()["execution_state"] == "busy",
        timeout_s=30,
        what="the kernel to be busy",
    )


@pytest.mark.parametrize("api", ["studio", "sagemaker"])
def test_an_app_never_used_is_measured_from_its_creation_time(
    classic: SageMakerEmulator, tmp_path: Path, api: str
) -> None:
    domain, server_app = _jupyter_server_app(classic)
    client = classic.client()
    client.create_app(
        DomainId=domain,
        UserProfileName="alice",
        AppType="KernelGateway",
        AppName="forgotten",
        ResourceSpec={"InstanceType": "ml.g4dn.xlarge", "SageMakerImageArn": DS},
    )
    forgotten = _kernel_gateway(classic, "ml.g4dn.xlarge")
    classic.wait_for(lambda: forgotten.status() == "InService")
    created = datetime.fromtimestamp(forgotten.created_at, UTC)
    wait_until(lambda: datetime.now(UTC) > created + timedelta(seconds=2), timeout_s=10, what="2 s to pass")
    watcher = _watch(
        classic, server_app, tmp_path / "j.sqlite3", "--once", "--idle-timeout", "1h",
        "--instance-idle-timeouts", "ml.g*=2s", "--classic-apps-api", api,
    )  # fmt: skip
    out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, out
    if api == "sagemaker":  # ListApps says when it was created: it is past its deadline already
        classic.wait_for(lambda: forgotten.status() == "Deleted")
    else:  # the Studio endpoint does not: first seen now, deleted 2 s from now
        assert forgotten.status() == "InService", out


def test_the_in_server_extension_culls_kernel_gateway_apps(classic: SageMakerEmulator) -> None:
    extension = "\n".join(
        [
            'c.ServerApp.jpserver_extensions["lamplighter"] = True',
            'c.Lamplighter.platform = "sagemaker"',
            'c.Lamplighter.idle_timeout = "1h"',
            'c.Lamplighter.instance_idle_timeouts = "ml.g*=2s"',
        ]
    )
    _, server_app = _jupyter_server_app(classic, extension)
    with _studio(server_app) as studio:
        kernel = _post(studio, "api/kernels", {"name": KERNEL, "instance_type": "ml.g4dn.xlarge"})
        assert server_app.server is not None
        asyncio.run(_used_once(server_app.server.url, kernel["id"]))
        gpu = _kernel_gateway(classic, "ml.g4dn.xlarge")
        classic.wait_for(lambda: gpu.status() == "Deleted", timeout_s=40)
        status = studio.get("lamplighter/api/status").json()
        assert server_app.status() == "InService"
        assert "JupyterServer app is free" in status["stopper"]
        assert "kernel_gateway_apps" in status, json.dumps(status)


def test_settings_name_the_classic_options() -> None:
    settings = load_settings({"instance_idle_timeouts": "ml.g*=10m", "classic_apps_api": "sagemaker"}, env={})
    assert settings.instance_idle_timeouts == ("ml.g*=10m",)
    assert not settings.classic_stop_server
    with pytest.raises(ConfigError, match="classic_apps_api"):
        load_settings({"classic_apps_api": "boto"}, env={})
    assert replace(settings, classic_stop_server=True).classic_stop_server


def _notebook(path: Path) -> Path:
    cell = {"cell_type": "code", "source": "print('answer', 40 + 2)", "metadata": {}, "outputs": []}
    nb = {
        "cells": [{**cell, "execution_count": None}],
        "metadata": {
            "kernelspec": {"name": KERNEL, "display_name": "Python 3 (Data Science)", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.parametrize("keep", [False, True])
def test_run_notebook_on_an_instance_type_deletes_its_app_unless_kept(
    classic: SageMakerEmulator, tmp_path: Path, keep: bool
) -> None:
    from lamplighter.cli import main

    _, server_app = _jupyter_server_app(classic)
    assert server_app.server is not None
    out = tmp_path / "out.ipynb"
    argv = ["run", "notebook", str(_notebook(tmp_path / "nb.ipynb")), str(out), "--upload"]
    argv += ["--url", server_app.server.url, "--instance-type", "ml.m5.large", "--no-progress"]
    assert main([*argv, *(["--keep-app"] if keep else [])]) == 0
    assert "answer 42" in out.read_text()
    app = _kernel_gateway(classic, "ml.m5.large")  # the kernel ran on an app of that type
    if keep:
        assert app.status() == "InService"
    else:
        assert app.status() in ("Deleting", "Deleted")
        assert [d["AppName"] for d in _deletes(classic)] == [app.app_name]


def test_run_notebook_with_an_instance_type_on_a_plain_server_is_one_line(
    jupyter: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamplighter.cli import main

    nb = _notebook(tmp_path / "nb.ipynb")
    nb.write_text(nb.read_text().replace(KERNEL, "python3"))
    code = main(
        [
            "run",
            "notebook",
            str(nb),
            "--upload",
            "--url",
            jupyter.url,
            "--token",
            jupyter.token,
            "--instance-type",
            "ml.t3.medium",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "not Studio Classic" in err and "Traceback" not in err
    assert (
        httpx.get(jupyter.url + "api/kernels", headers={"Authorization": f"token {jupyter.token}"}).json()
        == []
    )


# -- installing it: the Classic lifecycle configuration ---------------------------------------------


def test_lcc_for_jupyter_server_apps_installs_the_classic_culler(
    classic: SageMakerEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamplighter.cli import main

    domain = classic.add_domain()
    render = [
        "lcc",
        "render",
        "--app-type",
        "JupyterServer",
        "--wheelhouse",
        "s3://b/w/",
        "--idle-time",
        "2h",
    ]
    assert main(render) == 0
    script = capsys.readouterr().out
    (tmp_path / "on-start.sh").write_text(script)
    checked = subprocess.run(["bash", "-n", str(tmp_path / "on-start.sh")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert 'JL_BASE_URL="${JL_BASE_URL:-/jupyter/default/}"' in script
    assert 'LAMPLIGHTER_KEEP_TERMINALS="${KEEP_TERMINALS:-False}"' in script
    install = [
        "lcc",
        "install",
        "--domain",
        domain,
        "--app-type",
        "JupyterServer",
        "--wheelhouse",
        "s3://b/w/",
    ]
    assert main([*install, "--idle-time", "2h", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    described = classic.client().describe_domain(DomainId=domain)
    settings = described["DefaultUserSettings"]["JupyterServerAppSettings"]
    assert settings["DefaultResourceSpec"]["LifecycleConfigArn"] == result["lcc_arn"]
    assert (
        classic.client().describe_studio_lifecycle_config(StudioLifecycleConfigName=result["lcc_name"])[
            "StudioLifecycleConfigAppType"
        ]
        == "JupyterServer"
    )


def test_the_scripts_environment_in_a_jupyter_server_app_picks_the_classic_row(tmp_path: Path) -> None:
    from lamplighter.wiring import ROWS, row_for

    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(
        json.dumps(
            {
                "AppType": "JupyterServer",
                "DomainId": "d-abc123",
                "UserProfileName": "alice",
                "ResourceName": "default",
                "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:app/d-abc123/alice/jupyterserver/default",
            }
        )
    )
    env = {
        "JL_HOSTNAME": "0.0.0.0",
        "JL_PORT": "8888",
        "JL_BASE_URL": "/jupyter/default/",
        "LAMPLIGHTER_KEEP_TERMINALS": "True",
        "LAMPLIGHTER_INSTANCE_IDLE_TIMEOUTS": "ml.g*=20m",
        "LAMPLIGHTER_SAGEMAKER_METADATA": str(metadata),
    }
    settings = load_settings({"platform": "sagemaker"}, env=env)
    row, resolved = row_for(settings)
    assert row is ROWS[("sagemaker", "jupyter-server")] and row.companion is not None
    assert resolved.app_type == "jupyter-server" and resolved.url is not None
    assert resolved.url.endswith("/jupyter/default/")
    assert resolved.keep_terminals and resolved.instance_idle_timeouts == ("ml.g*=20m",)


def test_a_short_kernelspec_name_picks_the_one_classic_image_that_offers_it() -> None:
    from lamplighter.remote.kernels import check_kernelspec

    def specs(names: list[str]) -> httpx.MockTransport:
        body = {"default": names[0], "kernelspecs": {n: {"spec": {"language": "python"}} for n in names}}
        return httpx.MockTransport(lambda request: httpx.Response(200, json=body))

    async def check(names: list[str], wanted: str) -> tuple[str, str]:
        async with Connection(
            "http://studio.test/jupyter/default/", token="t", transport=specs(names)
        ) as conn:
            return await check_kernelspec(conn, wanted)

    one = [KERNEL, f"ir{MARK}{DS}"]
    assert asyncio.run(check(one, "python3")) == (KERNEL, "python")
    two = [KERNEL, f"python3{MARK}{IMAGES[1][0]}"]
    with pytest.raises(ConfigError, match="is not on the server"):
        asyncio.run(check(two, "python3"))


def test_an_app_on_its_way_up_is_kept_and_its_grace_starts_when_it_is_up(tmp_path: Path) -> None:
    from lamplighter.platforms.studio_classic import ClassicCuller

    now = [T0]
    listed = [replace(_app("slow", "ml.g5.xlarge"), created_at=T0, status="Pending")]

    class Apps:
        description = "test"

        def __init__(self) -> None:
            self.deleted: list[str] = []

        async def list(self) -> tuple[KernelGatewayApp, ...]:
            return tuple(listed)

        async def delete(self, app: KernelGatewayApp) -> Any:
            from lamplighter.model import StopOutcome, StopResult

            self.deleted.append(app.app_name)
            return StopResult(StopOutcome.STOPPING, "asked")

    class View:
        async def read(self) -> tuple[tuple[ClassicKernel, ...], tuple[TerminalInfo, ...]]:
            return (), ()

    settings = load_settings({"idle_timeout": "1h", "instance_idle_timeouts": "ml.g*=2m"}, env={})
    apps = Apps()
    culler = ClassicCuller(settings, View(), apps, target="http://s/jupyter/default/", clock=lambda: now[0])
    with Journal(tmp_path / "j.sqlite3") as journal:
        now[0] = T0 + timedelta(minutes=5)  # a slow start: longer than the app's 2 min timeout
        (pending,) = asyncio.run(culler.check(journal))
        assert pending.decision.action is Action.KEEP and "starting (Pending)" in pending.decision.reason
        listed[0] = replace(listed[0], status="InService")
        (up,) = asyncio.run(culler.check(journal))
        assert up.decision.action is Action.KEEP and up.decision.stop_at == now[0] + timedelta(minutes=2)
        now[0] += timedelta(minutes=2, seconds=1)
        (due,) = asyncio.run(culler.check(journal))
        assert due.decision.action is Action.STOP and apps.deleted == ["slow"]


def test_a_refused_create_app_leaves_nothing_behind(classic: SageMakerEmulator) -> None:
    domain = classic.add_domain(default_user_settings={"ExecutionRole": "arn:aws:iam::123456789012:role/R"})
    classic.add_user_profile(domain, "alice")
    client = classic.client()
    for _ in range(2):  # no instance type anywhere: refused, and refused again the same way
        with pytest.raises(client.exceptions.ClientError, match="InstanceType"):
            client.create_app(DomainId=domain, UserProfileName="alice", AppType="KernelGateway", AppName="k")
    assert not [a for a in classic.iter_apps() if a.app_type == "KernelGateway"]
