"""SageMaker Studio platform: app identity, the DeleteApp stopper and the presigned login, against the emulator."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from lamplighter.errors import ConfigError, PlatformError, RemoteError, RemoteTimeout, Unsupported
from lamplighter.model import StopOutcome
from lamplighter.platforms.sagemaker import SageMakerStopper
from lamplighter.retry import Backoff
from lamplighter.sagemaker.client import RetryPolicy, call, sagemaker_client, wait_until_in_service
from lamplighter.sagemaker.identity import AppIdentity, jupyter_base_url
from lamplighter.sagemaker.login import presigned_connection
from tests.decisions import STOP
from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain

pytest_plugins = ["tests.emulators.conftest_sagemaker"]

_FAST = RetryPolicy(attempts=4, backoff=Backoff(first_s=0.01, longest_s=0.02, jitter=0.5))


def _create(
    sm: SageMakerEmulator, domain: StudioDomain, app_type: str, *, space: str | None = None
) -> AppIdentity:
    owner = {"SpaceName": space} if space else {"UserProfileName": domain.user}
    sm.client().create_app(DomainId=domain.id, AppType=app_type, AppName="default", **owner)
    app = sm.app(domain.id, app_type, space=space, user_profile=None if space else domain.user)
    return AppIdentity.from_metadata(app.metadata_path)


def _stopper(identity: AppIdentity, sm: SageMakerEmulator, **kwargs: object) -> SageMakerStopper:
    kwargs.setdefault("retry", _FAST)
    kwargs.setdefault("poll_interval_s", 0.05)
    return SageMakerStopper(identity, endpoint_url=sm.endpoint_url, **kwargs)  # type: ignore[arg-type]


# -- identity -------------------------------------------------------------------------------------


def test_identity_from_the_apps_metadata_file(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    identity = _create(sm, domain, "CodeEditor", space=domain.space)
    assert identity == AppIdentity(
        domain.id, "CodeEditor", "default", space_name=domain.space, region="us-east-1"
    )
    assert identity.api_params() == {
        "DomainId": domain.id,
        "AppType": "CodeEditor",
        "AppName": "default",
        "SpaceName": domain.space,
    }
    assert identity.label == f"{domain.id}/space:{domain.space}/CodeEditor/default"


def test_identity_from_metadata_variants(tmp_path: Path) -> None:
    classic = AppIdentity.from_metadata_dict(
        {
            "DomainId": "d-1",
            "AppType": "JupyterServer",
            "ResourceName": "default",
            "UserProfileName": "bob",
            "SpaceName": "",
            "ResourceArn": "arn:aws:sagemaker:eu-west-1:1:app/d-1/bob/jupyterserver/default",
        }
    )
    assert (classic.user_profile_name, classic.space_name, classic.region) == ("bob", None, "eu-west-1")
    assert classic.api_params()["UserProfileName"] == "bob"
    # A space app is addressed by its space even when the owner is named too; no ARN, no region.
    both = AppIdentity.from_metadata_dict(
        {
            "DomainId": "d-1",
            "AppType": "JupyterLab",
            "ResourceName": "default",
            "SpaceName": "s",
            "UserProfileName": "u",
        }
    )
    assert (both.space_name, both.user_profile_name, both.region) == ("s", None, None)
    with pytest.raises(ConfigError, match="neither a SpaceName nor a UserProfileName"):
        AppIdentity.from_metadata_dict(
            {"DomainId": "d-1", "AppType": "JupyterLab", "ResourceName": "default"}
        )
    with pytest.raises(ConfigError, match="missing DomainId"):
        AppIdentity.from_metadata_dict({"AppType": "JupyterLab", "ResourceName": "default", "SpaceName": "s"})
    with pytest.raises(ConfigError, match="not found"):
        AppIdentity.from_metadata(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AppIdentity.from_metadata(bad)


def test_jupyter_base_urls() -> None:
    assert jupyter_base_url("JupyterLab") == "/jupyterlab/default/"
    assert jupyter_base_url("JupyterServer") == "/jupyter/default/"
    with pytest.raises(Unsupported, match="CodeEditor"):
        jupyter_base_url("CodeEditor")


def test_missing_boto3_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"pip install 'lamplighter\[sagemaker\]'"):
        sagemaker_client(region="us-east-1")


# -- the stopper ----------------------------------------------------------------------------------


async def test_stopper_retries_throttling(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    identity = _create(sm, domain, "CodeEditor", space=domain.space)
    sm.inject_error("DeleteApp", "ThrottlingException", "Rate exceeded", times=2)
    result = await _stopper(identity, sm).stop(STOP)
    assert result.outcome is StopOutcome.STOPPED, result.detail
    assert sm.operations().count("DeleteApp") == 3


async def test_stopper_gives_up_after_the_retries(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    identity = _create(sm, domain, "CodeEditor", space=domain.space)
    sm.inject_error("DeleteApp", "ThrottlingException", "Rate exceeded", times=4)
    result = await _stopper(identity, sm).stop(STOP)
    assert result.outcome is StopOutcome.FAILED
    assert result.detail == "DeleteApp: ThrottlingException: Rate exceeded"
    assert sm.app(domain.id, "CodeEditor", space=domain.space).status() == "InService"


async def test_stopper_access_denied_names_the_permission(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    identity = _create(sm, domain, "CodeEditor", space=domain.space)
    sm.inject_error("DeleteApp", "AccessDeniedException", "User: arn:... is not authorized")
    result = await _stopper(identity, sm).stop(STOP)
    assert result.outcome is StopOutcome.FAILED
    assert "sagemaker:DeleteApp" in result.detail
    assert "\n" not in result.detail


async def test_stopper_for_an_app_that_never_existed(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    identity = AppIdentity(domain.id, "JupyterLab", space_name=domain.shared_space)
    result = await _stopper(identity, sm).stop(STOP)
    assert result.outcome is StopOutcome.STOPPED
    assert "does not exist" in result.detail


async def test_slow_delete_is_stopping_until_deleted(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    sm.deleting_s = 1.0
    identity = _create(sm, domain, "CodeEditor", space=domain.space)
    stopper = _stopper(identity, sm, verify_timeout_s=0.2)
    first = await stopper.stop(STOP)
    assert first.outcome is StopOutcome.STOPPING
    assert "still Deleting" in first.detail
    # A second stop while it is deleting: the conflict is recognised by asking, not by parsing messages.
    second = await stopper.stop(STOP)
    assert second.outcome is StopOutcome.STOPPING
    app = sm.app(domain.id, "CodeEditor", space=domain.space)
    sm.wait_for(lambda: app.status() == "Deleted", timeout_s=5)
    third = await stopper.stop(STOP)
    assert third.outcome is StopOutcome.STOPPED


async def test_no_credentials_is_failed_not_raised(
    sm: SageMakerEmulator, domain: StudioDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    identity = AppIdentity(domain.id, "JupyterLab", space_name=domain.space)
    result = await _stopper(identity, sm).stop(STOP)
    assert result.outcome is StopOutcome.FAILED
    assert "no AWS credentials" in result.detail


# -- waiting and logging in -----------------------------------------------------------------------


async def test_wait_until_in_service_fails_clearly(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    client = sagemaker_client(endpoint_url=sm.endpoint_url)
    sm.fail_next_app("ResourceLimitExceeded: no ml.t3.medium capacity")
    failed = _create(sm, domain, "CodeEditor", space=domain.space)
    with pytest.raises(PlatformError, match="failed to start: ResourceLimitExceeded"):
        await wait_until_in_service(client, failed, timeout_s=5, poll_interval_s=0.05)
    absent = AppIdentity(domain.id, "JupyterLab", space_name=domain.shared_space)
    with pytest.raises(RemoteTimeout, match="last status: not found"):
        await wait_until_in_service(client, absent, timeout_s=0.2, poll_interval_s=0.05)
    await call(client, "DeleteApp", **failed.api_params())
    with pytest.raises(PlatformError, match="Delet"):
        await wait_until_in_service(client, failed, timeout_s=5, poll_interval_s=0.05)


async def test_presigned_login_then_delete_app_stops_the_server(
    sm: SageMakerEmulator, domain: StudioDomain, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: a JupyterLab app with a real Jupyter server, logged in to from outside, then stopped."""
    caplog.set_level(logging.DEBUG)
    identity = _create(sm, domain, "JupyterLab", space=domain.space)
    client = sagemaker_client(endpoint_url=sm.endpoint_url)
    await wait_until_in_service(client, identity, timeout_s=30, poll_interval_s=0.1)
    app = sm.app(domain.id, "JupyterLab", space=domain.space)
    server = app.server
    assert server is not None and server.running
    (server.root_dir / "hello.txt").write_text("hi")

    # Only the space is named: the login is made for its owner, through redirects and cookies.
    conn = await presigned_connection(
        domain.id, space=domain.space, app_type="JupyterLab", endpoint_url=sm.endpoint_url
    )
    async with conn:
        # Through Studio's front door (the Jupyter server itself has no token), on the app's base path.
        assert conn.base_url == sm.studio_url + "/jupyterlab/default/"
        assert not conn.uses_token
        listing = await conn.get("api/contents")
        assert "hello.txt" in {item["name"] for item in listing["content"]}
        terminal = await conn.request("POST", "api/terminals")  # cookie auth with _xsrf
        await conn.request("DELETE", f"api/terminals/{terminal['name']}")
        cookies = conn.ws_headers()["Cookie"]
    one_time_tokens = list(sm._logins)
    assert one_time_tokens
    secrets = [*one_time_tokens, *(c.split("=", 1)[1] for c in cookies.split("; "))]
    for secret in secrets:
        assert secret not in caplog.text

    stopper = _stopper(identity, sm)
    assert stopper.description == f"DeleteApp {domain.id}/space:{domain.space}/JupyterLab/default"
    result = await stopper.stop(STOP)
    assert result.outcome is StopOutcome.STOPPED, result.detail
    assert app.status() == "Deleted"
    assert not server.running
    assert sm.operations().count("DeleteApp") == 1
    # Stopping again is idempotent: the app is already gone.
    again = await stopper.stop(STOP)
    assert again.outcome is StopOutcome.STOPPED
    assert "already deleted" in again.detail


async def test_presigned_login_to_an_app_that_is_not_running(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    with pytest.raises(RemoteError, match="is the app InService") as info:
        await presigned_connection(
            domain.id,
            user_profile=domain.user,
            space=domain.space,
            app_type="JupyterLab",
            endpoint_url=sm.endpoint_url,
        )
    for token in sm._logins:
        assert token not in str(info.value)
    with pytest.raises(ConfigError, match="shared space"):
        await presigned_connection(
            domain.id, space=domain.shared_space, app_type="JupyterLab", endpoint_url=sm.endpoint_url
        )


def test_identity_ignores_extra_metadata_keys() -> None:
    # The metadata file of a real JupyterLab app has more keys than we read; they are ignored.
    data = json.loads(
        '{"AppType": "JupyterLab", "DomainId": "d-x", "UserProfileName": "", "ResourceArn": '
        '"arn:aws:sagemaker:us-west-2:1:app/d-x/s/jupyterlab/default", "ResourceName": "default", '
        '"AppImageVersion": "", "SpaceName": "s", "ExecutionRoleArn": "arn:aws:iam::1:role/r"}'
    )
    assert AppIdentity.from_metadata_dict(data).region == "us-west-2"
