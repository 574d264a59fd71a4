"""SageMaker notebook instances: ``watch --platform sagemaker-notebook-instance`` inside an emulated instance.

Each instance runs a real ``jupyter server`` over https with a self-signed certificate on a free loopback
port (the instance's ``https://localhost:8443``); boto3 reaches the emulator through ``endpoint_url``.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lamplighter.cli import main
from lamplighter.errors import ConfigError
from lamplighter.journal import Journal
from lamplighter.model import Action, Clock, ServerSnapshot, StopOutcome
from lamplighter.platforms.notebook_instance import NotebookInstanceProbe, NotebookInstanceStopper
from lamplighter.remote.connection import Connection
from lamplighter.sagemaker.notebook_instance import NotebookInstanceIdentity
from tests.conftest import cli
from tests.decisions import STOP
from tests.emulators.notebook_instances import EmulatedNotebookInstance
from tests.emulators.sagemaker import SageMakerEmulator

pytest_plugins = ["tests.emulators.conftest_sagemaker"]


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 signed by itself, as a notebook instance's server has."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def client(sm: SageMakerEmulator) -> Iterator[Any]:
    """One boto3 client per test, closed after it (each client holds its own connection pool)."""
    made = sm.client()
    yield made
    made.close()


@pytest.fixture
def nbi(
    sm: SageMakerEmulator, client: Any, self_signed: tuple[Path, Path]
) -> Iterator[EmulatedNotebookInstance]:
    """An InService notebook instance ``nb1`` whose Jupyter server speaks https with a self-signed certificate."""
    sm.notebook_tls = self_signed
    instance = sm.add_notebook_instance("nb1")
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb1")["NotebookInstanceStatus"]
            == "InService"
        )
    )
    yield instance


def watch_instance(instance: EmulatedNotebookInstance, tmp_path: Path, *args: str) -> int:
    assert instance.server is not None
    return main(
        [
            "watch",
            "--platform",
            "sagemaker-notebook-instance",
            "--sagemaker-metadata",
            str(instance.metadata_path),
            "--notebook-instance-port",
            str(instance.server.port),
            "--journal",
            str(tmp_path / "j.sqlite3"),
            *args,
        ]
    )


def test_idle_instance_is_stopped_not_deleted(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, tmp_path: Path, client: Any
) -> None:
    server = nbi.server
    assert server is not None and server.url.startswith("https://")
    assert watch_instance(nbi, tmp_path, "--idle-timeout", "2s") == 0
    answer = client.describe_notebook_instance(NotebookInstanceName="nb1")
    assert answer["NotebookInstanceStatus"] == "Stopped"
    assert not server.running
    assert sm.operations().count("StopNotebookInstance") == 1
    assert "DeleteNotebookInstance" not in sm.operations() and "DeleteApp" not in sm.operations()
    with Journal(tmp_path / "j.sqlite3") as j:
        action = j.events(kind="action")[-1]
    assert action.verdict == "stopped"
    assert action.detail["stopper"] == "StopNotebookInstance nb1"


def test_a_terminal_in_use_keeps_the_instance(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, tmp_path: Path, client: Any
) -> None:
    """The AWS autostop script reads only sessions (its issue #90): it stops an instance under a working
    terminal. Terminal output here goes on for about 6 s with a 2 s idle timeout."""
    server = nbi.server
    assert server is not None
    asyncio.run(_start_terminal(server.url, "for i in $(seq 20); do echo tick; sleep 0.3; done; sleep 600"))
    started = time.monotonic()
    assert watch_instance(nbi, tmp_path, "--idle-timeout", "2s", "--no-process-signal") == 0
    elapsed = time.monotonic() - started
    assert elapsed >= 6.0, f"stopped after {elapsed:.1f} s while the terminal was in use"
    assert (
        client.describe_notebook_instance(NotebookInstanceName="nb1")["NotebookInstanceStatus"] == "Stopped"
    )
    with Journal(tmp_path / "j.sqlite3") as j:
        deadlines = {e.summary.rsplit("stops at ", 1)[-1] for e in j.events(kind="decision")}
    assert len(deadlines) >= 3, deadlines  # each tick moved the deadline later


def test_a_silent_background_job_keeps_the_instance(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, tmp_path: Path
) -> None:
    """``nohup python train.py &`` prints nothing and runs no kernel: only the process tree shows it. The
    process signal finds the server from the https loopback default's port."""
    from tests.test_running_work_paths import nohup_busy

    server = nbi.server
    assert server is not None
    asyncio.run(_start_terminal(server.url, nohup_busy(6)))
    started = time.monotonic()
    fast = ["--process-window", "1.5s", "--process-sample-interval", "0.2s", "--busy-recheck", "0.5s"]
    assert watch_instance(nbi, tmp_path, "--idle-timeout", "2s", *fast) == 0
    elapsed = time.monotonic() - started
    assert elapsed >= 6.0, f"stopped after {elapsed:.1f} s while the job was still running"
    with Journal(tmp_path / "j.sqlite3") as j:
        reasons = " ".join(e.summary for e in j.events(kind="decision"))
    assert "% CPU" in reasons


async def _start_terminal(url: str, command: str) -> None:
    # Our own self-signed test certificate, on loopback.
    async with Connection(url, verify_tls=False) as conn:
        await conn.request("POST", "api/terminals", json_body={"shell_command": ["bash", "-c", command]})


def test_tls_is_unverified_only_for_the_instances_own_loopback_server(
    nbi: EmulatedNotebookInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nbi.server
    assert server is not None
    common = ["--platform", "sagemaker-notebook-instance", "--sagemaker-metadata", str(nbi.metadata_path)]
    assert main(["status", *common, "--notebook-instance-port", str(server.port)]) == 0
    capsys.readouterr()
    # The same server named by --url is verified like any other, and its certificate is refused. In a
    # process of its own: httpcore may leave the refused handshake's socket for the garbage collector.
    refused = cli("status", *common, "--url", server.url)
    assert refused.returncode == 3, refused.stderr
    assert "certificate" in refused.stderr.lower() or "ssl" in refused.stderr.lower(), refused.stderr
    assert "Traceback" not in refused.stderr
    assert main(["status", *common, "--url", server.url, "--insecure"]) == 0


def test_identity_from_the_metadata_file(tmp_path: Path) -> None:
    meta = tmp_path / "m.json"
    meta.write_text(
        '{"ResourceArn": "arn:aws:sagemaker:eu-west-1:1:notebook-instance/nb-7", "ResourceName": "nb-7"}'
    )
    assert NotebookInstanceIdentity.from_metadata(meta) == NotebookInstanceIdentity("nb-7", "eu-west-1")
    meta.write_text(
        '{"ResourceArn": "arn:aws:sagemaker:eu-west-1:1:app/d-1/alice/jupyterlab/default", "ResourceName": "default", "DomainId": "d-1"}'
    )
    with pytest.raises(ConfigError, match="not a notebook instance"):
        NotebookInstanceIdentity.from_metadata(meta)
    with pytest.raises(ConfigError, match="not found"):
        NotebookInstanceIdentity.from_metadata(tmp_path / "missing.json")


def test_no_metadata_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "watch",
            "--platform",
            "sagemaker-notebook-instance",
            "--sagemaker-metadata",
            str(tmp_path / "none.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


class _Idle:
    """A Jupyter probe that has never run anything, or has one kernel."""

    def __init__(self, kernels: tuple[object, ...] = ()) -> None:
        self.kernels = kernels

    @property
    def target(self) -> str:
        return "https://localhost:8443/"

    async def snapshot(self) -> ServerSnapshot:
        moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
        return ServerSnapshot(self.target, moment, moment, 0, kernels=self.kernels)  # type: ignore[arg-type]

    async def cull_kernel(self, kernel_id: str) -> None:
        pass

    async def cull_terminal(self, name: str) -> None:
        pass


def test_last_modified_time_counts_only_while_nothing_runs(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, client: Any
) -> None:
    from lamplighter.model import KernelInfo

    identity = NotebookInstanceIdentity("nb1")
    idle = asyncio.run(NotebookInstanceProbe(_Idle(), identity, client=client).snapshot())
    (reading,) = idle.readings
    assert reading.clock is Clock.INTERACTION
    assert reading.at is not None and abs(reading.at.timestamp() - nbi.last_modified) < 1
    kernel = KernelInfo("k1", "python3", "busy", datetime(2026, 1, 1, tzinfo=timezone.utc), 0)
    busy = asyncio.run(NotebookInstanceProbe(_Idle((kernel,)), identity, client=client).snapshot())
    assert busy.readings == ()
    assert sm.operations().count("DescribeNotebookInstance") >= 1


def test_a_recent_start_holds_off_a_stop_the_server_alone_would_allow(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, client: Any
) -> None:
    """The server's own answer (``_Idle``) is months old; the instance started moments ago."""
    from lamplighter.model import Memory
    from lamplighter.policy import decide
    from lamplighter.settings import load_settings

    settings = load_settings({"idle_timeout": "1h"}, env={})
    now = datetime.now(timezone.utc)
    plain = asyncio.run(_Idle().snapshot())
    assert decide(plain, Memory(), settings, now).action is Action.STOP
    probe = NotebookInstanceProbe(_Idle(), NotebookInstanceIdentity("nb1"), client=client)
    decision = decide(asyncio.run(probe.snapshot()), Memory(), settings, now)
    assert decision.action is Action.KEEP
    assert "LastModifiedTime" in " ".join(decision.reasons), decision.reasons


def _stop(
    client: Any, name: str = "nb1", *, verify_timeout_s: float = 5.0, poll_interval_s: float = 0.05
) -> tuple[StopOutcome, str]:
    stopper = NotebookInstanceStopper(
        NotebookInstanceIdentity(name),
        client=client,
        verify_timeout_s=verify_timeout_s,
        poll_interval_s=poll_interval_s,
    )
    result = asyncio.run(stopper.stop(STOP))
    return result.outcome, result.detail


def test_stopper_verifies_and_is_idempotent(
    sm: SageMakerEmulator, client: Any, nbi: EmulatedNotebookInstance
) -> None:
    assert _stop(client, verify_timeout_s=10, poll_interval_s=0.05)[0] is StopOutcome.STOPPED
    outcome, detail = _stop(client)
    assert outcome is StopOutcome.STOPPED and "already stopped" in detail


def test_stopper_reports_a_stop_still_under_way(
    sm: SageMakerEmulator, client: Any, nbi: EmulatedNotebookInstance
) -> None:
    sm.deleting_s = 30.0
    outcome, detail = _stop(client, verify_timeout_s=0.3, poll_interval_s=0.05)
    assert outcome is StopOutcome.STOPPING and "Stopping" in detail
    # Asked again while Stopping (SageMaker refuses the call): still under way, not a failure.
    outcome, detail = _stop(client, verify_timeout_s=0.2, poll_interval_s=0.05)
    assert outcome is StopOutcome.STOPPING


def test_stopper_failures_are_one_line(
    sm: SageMakerEmulator, client: Any, nbi: EmulatedNotebookInstance
) -> None:
    sm.inject_error("StopNotebookInstance", "AccessDeniedException", "not authorized")
    outcome, detail = _stop(client)
    assert outcome is StopOutcome.FAILED and "sagemaker:StopNotebookInstance" in detail
    outcome, detail = _stop(client, "nb-gone")
    assert outcome is StopOutcome.FAILED and "RecordNotFound" in detail and "\n" not in detail


def test_emulator_follows_the_service_model(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, client: Any
) -> None:
    from botocore.exceptions import ClientError, ParamValidationError

    with pytest.raises(ParamValidationError):
        client.stop_notebook_instance()
    with pytest.raises(ClientError, match="RecordNotFound"):
        client.describe_notebook_instance(NotebookInstanceName="nope")
    with pytest.raises(ClientError, match=r"not in \(\[Stopped, Failed\]\)"):
        client.update_notebook_instance(NotebookInstanceName="nb1", LifecycleConfigName="x")
    with pytest.raises(ClientError, match="Content"):
        client.create_notebook_instance_lifecycle_config(
            NotebookInstanceLifecycleConfigName="big", OnStart=[{"Content": "x" * 16385}]
        )
    client.stop_notebook_instance(NotebookInstanceName="nb1")
    with pytest.raises(ClientError, match=r"not in \(\[InService\]\)"):
        client.stop_notebook_instance(NotebookInstanceName="nb1")
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb1")["NotebookInstanceStatus"]
            == "Stopped"
        )
    )
    client.start_notebook_instance(NotebookInstanceName="nb1")
    assert (
        client.describe_notebook_instance(NotebookInstanceName="nb1")["NotebookInstanceStatus"] == "Pending"
    )
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb1")["NotebookInstanceStatus"]
            == "InService"
        )
    )


# -- lcc render / install --notebook-instance ---------------------------------------------------------


def _on_start(sm: SageMakerEmulator, lcc: str) -> str:
    (hook,) = sm.notebook_lcc(lcc)["OnStart"]
    return base64.b64decode(hook["Content"]).decode()


def _install(*args: str) -> int:
    return main(["lcc", "install", "--notebook-instance", "nb1", "--wheelhouse", "s3://b/wheels/", *args])


def test_lcc_install_on_a_stopped_instance(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    client.stop_notebook_instance(NotebookInstanceName="nb1")
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb1")["NotebookInstanceStatus"]
            == "Stopped"
        )
    )
    assert _install("--idle-timeout", "30m") == 0
    out = capsys.readouterr().out
    assert "called CreateNotebookInstanceLifecycleConfig" in out and "called UpdateNotebookInstance" in out
    assert "<base64 on-start script" in out  # the content is not printed
    described = client.describe_notebook_instance(NotebookInstanceName="nb1")
    assert described["NotebookInstanceLifecycleConfigName"] == "lamplighter-nb1"
    script = _on_start(sm, "lamplighter-nb1")
    assert "watch --platform sagemaker-notebook-instance" in script
    assert 'LAMPLIGHTER_NOTEBOOK_INSTANCE="${LAMPLIGHTER_NOTEBOOK_INSTANCE:-nb1}"' in script
    assert 'IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-1800}"' in script
    assert "JupyterSystemEnv" in script and "/var/log/jupyter.log" in script
    assert "JL_PORT" not in script and "DeleteApp" not in script
    bash = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert bash.returncode == 0, bash.stderr

    # The same script again changes nothing; another one updates the configuration in place.
    before = len(sm.operations())
    assert _install("--idle-timeout", "30m") == 0
    assert not {"CreateNotebookInstanceLifecycleConfig", "UpdateNotebookInstanceLifecycleConfig",
                "UpdateNotebookInstance"} & set(sm.operations()[before:])  # fmt: skip
    assert _install("--idle-timeout", "45m") == 0
    assert "UpdateNotebookInstanceLifecycleConfig" in sm.operations()[before:]
    assert 'IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-2700}"' in _on_start(sm, "lamplighter-nb1")


def test_lcc_install_refuses_a_running_instance_before_writing(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _install() == 2
    err = capsys.readouterr().err
    assert "is InService" in err and "stop it first" in err and "Traceback" not in err
    written = {"CreateNotebookInstanceLifecycleConfig", "UpdateNotebookInstance"}
    assert not written & set(sm.operations())
    assert _install("--dry-run") == 2  # the plan is refused the same way


def test_lcc_render_for_a_notebook_instance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lcc", "render", "--notebook-instance", "nb1", "--wheelhouse", "s3://b/w/"]) == 0
    script = capsys.readouterr().out
    assert "stop this SageMaker notebook instance" in script
    assert "sagemaker:StopNotebookInstance" in script
    assert main(["lcc", "render", "--wheelhouse", "s3://b/w/"]) == 2
    assert "--app-type is required (or --notebook-instance NAME)" in capsys.readouterr().err
    assert main(["lcc", "render", "--notebook-instance", "bad name", "--wheelhouse", "s3://b/w/"]) == 2


def test_lcc_install_refuses_a_script_over_16_kb(
    sm: SageMakerEmulator, nbi: EmulatedNotebookInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.sh"
    big.write_text("#!/bin/bash\n" + "# padding\n" * 1300)
    assert _install("--script", str(big)) == 2
    assert "SageMaker takes 16384" in capsys.readouterr().err


# -- run notebook|shell --notebook-instance ---------------------------------------------------------


def test_run_shell_on_a_notebook_instance_through_its_presigned_login(
    sm: SageMakerEmulator, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    sm.add_notebook_instance("nb2")  # plain http behind the emulated front door
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb2")["NotebookInstanceStatus"]
            == "InService"
        )
    )
    code = main(["run", "shell", "--notebook-instance", "nb2", "--", "echo hello from nb2; exit 5"])
    assert code == 5
    assert "hello from nb2" in capsys.readouterr().out
    assert "CreatePresignedNotebookInstanceUrl" in sm.operations()
    (params,) = [p for op, p in sm.calls if op == "CreatePresignedNotebookInstanceUrl"]
    assert params == {"NotebookInstanceName": "nb2", "SessionExpirationDurationInSeconds": 1800}


def test_run_on_a_stopped_notebook_instance_is_one_line(
    sm: SageMakerEmulator, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    sm.add_notebook_instance("nb3")
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb3")["NotebookInstanceStatus"]
            == "InService"
        )
    )
    client.stop_notebook_instance(NotebookInstanceName="nb3")
    code = main(["run", "shell", "--notebook-instance", "nb3", "--", "true"])
    err = capsys.readouterr().err
    assert code == 255, err  # run shell's own failure, as ssh's (the command's status is 0-255)
    assert "nb3" in err and "InService" in err and "Traceback" not in err and "authToken" not in err


def test_run_notebook_on_a_notebook_instance(
    sm: SageMakerEmulator, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    import nbformat

    instance = sm.add_notebook_instance("nb4")
    sm.wait_for(
        lambda: (
            client.describe_notebook_instance(NotebookInstanceName="nb4")["NotebookInstanceStatus"]
            == "InService"
        )
    )
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [
        nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(n * 7)"),
    ]
    (instance.workdir / "root" / "seven.ipynb").write_text(nbformat.writes(nb))
    code = main(
        [
            "run",
            "notebook",
            "--notebook-instance",
            "nb4",
            "seven.ipynb",
            "-o",
            "seven-out.ipynb",
            "-p",
            "n",
            "6",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = nbformat.read(instance.workdir / "root" / "seven-out.ipynb", as_version=4)
    assert "42" in "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
