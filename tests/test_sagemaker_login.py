"""Who a presigned login is made for, the emulator's SageMaker rules, and both login flows.

A private space belongs to its owner (``DescribeSpace`` ``OwnershipSettings``): every path that logs in
(the presigned login, the Lambda's on-start, the fleet check) must log in as the owner, whatever
``--login-as`` says; a shared space takes the configured user, else the event's user when it is in the
domain. The emulator refuses what SageMaker refuses, so a wrong login cannot pass as ``ok`` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from lamplighter.aws_lambda import handler
from lamplighter.errors import ConfigError, RemoteError
from lamplighter.sagemaker.aws_lambda import event_user
from lamplighter.sagemaker.client import sagemaker_client
from lamplighter.sagemaker.fleet import AgentState, fleet_status
from lamplighter.sagemaker.login import presigned_connection
from tests.emulators.sagemaker import LOGIN_FLOWS, SageMakerEmulator, StudioDomain, aws_env

pytest_plugins = ["tests.emulators.conftest_sagemaker"]


def _error(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def _presigned_users(sm: SageMakerEmulator) -> list[tuple[str, str | None]]:
    return [
        (params["UserProfileName"], params.get("SpaceName"))
        for name, params in sm.calls
        if name == "CreatePresignedDomainUrl"
    ]


def _running(sm: SageMakerEmulator, domain: StudioDomain, space: str) -> None:
    sm.client().create_app(DomainId=domain.id, SpaceName=space, AppType="JupyterLab", AppName="default")
    app = sm.app(domain.id, "JupyterLab", space=space)
    sm.wait_for(lambda: app.status() == "InService")


# -- the emulator's rules -------------------------------------------------------------------------


def test_apps_only_where_sagemaker_allows_them(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    client = sm.client()
    with pytest.raises(ClientError) as lab_for_user:
        client.create_app(
            DomainId=domain.id, UserProfileName=domain.user, AppType="JupyterLab", AppName="default"
        )
    assert _error(lab_for_user) == "ValidationException"
    with pytest.raises(ClientError) as gateway_in_space:
        client.create_app(DomainId=domain.id, SpaceName=domain.space, AppType="KernelGateway", AppName="k")
    assert _error(gateway_in_space) == "ValidationException"

    client.create_app(DomainId=domain.id, SpaceName=domain.space, AppType="JupyterLab", AppName="default")
    with pytest.raises(ClientError) as second:
        client.create_app(DomainId=domain.id, SpaceName=domain.space, AppType="CodeEditor", AppName="default")
    assert _error(second) == "ResourceInUse"
    # Studio Classic apps belong to user profiles.
    client.create_app(DomainId=domain.id, UserProfileName=domain.user, AppType="KernelGateway", AppName="k")


def test_list_apps_is_ascending_by_default(sm: SageMakerEmulator, domain: StudioDomain) -> None:
    client = sm.client()
    for space in (domain.space, domain.shared_space):
        client.create_app(DomainId=domain.id, SpaceName=space, AppType="CodeEditor", AppName="default")
    default = [a["SpaceName"] for a in client.list_apps(DomainIdEquals=domain.id)["Apps"]]
    assert default == [domain.space, domain.shared_space]
    newest_first = client.list_apps(DomainIdEquals=domain.id, SortOrder="Descending")["Apps"]
    assert [a["SpaceName"] for a in newest_first] == [domain.shared_space, domain.space]


def test_presigned_url_into_a_private_space_only_for_its_owner(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    sm.add_user_profile(domain.id, "bob")
    client = sm.client()
    with pytest.raises(ClientError) as refused:
        client.create_presigned_domain_url(DomainId=domain.id, UserProfileName="bob", SpaceName=domain.space)
    assert _error(refused) == "ValidationException"
    for user, space in ((domain.user, domain.space), ("bob", domain.shared_space)):
        url = client.create_presigned_domain_url(DomainId=domain.id, UserProfileName=user, SpaceName=space)
        assert url["AuthorizedUrl"].startswith(sm.studio_url + "/auth?token=")
    with pytest.raises(ClientError) as stranger:
        client.create_presigned_domain_url(DomainId=domain.id, UserProfileName="eve", SpaceName=domain.space)
    assert _error(stranger) == "ResourceNotFound"


def test_apps_have_no_token_and_sit_behind_the_cookie_checking_front_door(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    _running(sm, domain, domain.space)
    server = sm.app(domain.id, "JupyterLab", space=domain.space).server
    assert server is not None
    # As SageMaker Distribution starts it: the server itself asks for nothing ...
    assert httpx.get(server.url + "api/status").status_code == 200
    # ... and Studio's proxy lets nobody in without a session cookie, or with a made-up one.
    front = sm.studio_url + "/jupyterlab/default/api/status"
    assert httpx.get(front).status_code == 403
    assert httpx.get(front, cookies={"studio-session": "guessed"}).status_code == 403


# -- the right user -------------------------------------------------------------------------------


async def test_private_space_logs_in_as_its_owner_and_refuses_anyone_else(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    sm.add_user_profile(domain.id, "bob")
    _running(sm, domain, domain.space)
    with pytest.raises(ConfigError, match="private to user profile alice; a login as bob is refused"):
        await presigned_connection(
            domain.id,
            user_profile="bob",
            space=domain.space,
            app_type="JupyterLab",
            endpoint_url=sm.endpoint_url,
        )
    # The shared-space user is a fallback for shared spaces: a private space still gets its owner.
    conn = await presigned_connection(
        domain.id,
        space=domain.space,
        shared_space_user="bob",
        app_type="JupyterLab",
        endpoint_url=sm.endpoint_url,
    )
    async with conn:
        await conn.get("api/contents")
    assert _presigned_users(sm) == [(domain.user, domain.space)]


async def test_shared_space_takes_the_configured_user_then_a_member_from_the_event(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    sm.add_user_profile(domain.id, "bob")
    _running(sm, domain, domain.shared_space)
    client = sagemaker_client(endpoint_url=sm.endpoint_url)
    kinds: list[dict[str, Any]] = [
        {"shared_space_user": "bob"},
        {"event_user": "bob"},
        {"user_profile": "bob"},
    ]
    for kwargs in kinds:
        conn = await presigned_connection(
            domain.id, space=domain.shared_space, app_type="JupyterLab", client=client, **kwargs
        )
        await conn.aclose()
    assert _presigned_users(sm) == [("bob", domain.shared_space)] * 3
    # An event user who is not in the domain is no login: with no configured user and no owner, a clear error.
    with pytest.raises(ConfigError, match="shared space with no owner"):
        await presigned_connection(
            domain.id, space=domain.shared_space, app_type="JupyterLab", client=client, event_user="mallory"
        )


async def test_fleet_status_reads_a_private_space_as_its_owner(
    sm: SageMakerEmulator, domain: StudioDomain
) -> None:
    sm.add_user_profile(domain.id, "bob")
    _running(sm, domain, domain.space)
    now = datetime.now(timezone.utc)
    entries = await fleet_status(domain.id, now=now, endpoint_url=sm.endpoint_url, login_as="bob")
    assert [e.agent for e in entries] == [AgentState.NO_AGENT]
    assert _presigned_users(sm) == [(domain.user, domain.space)]


def test_lambda_logs_in_to_a_private_space_as_its_owner_whatever_login_as_says(
    sm: SageMakerEmulator, domain: StudioDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm.add_user_profile(domain.id, "bob")
    _running(sm, domain, domain.space)
    monkeypatch.setenv("LAMPLIGHTER_ONSTART_SCRIPT", "echo hi\n")
    monkeypatch.setenv("LAMPLIGHTER_ONSTART_LOGIN_AS", "bob")
    event = {
        "detail": {
            "eventSource": "sagemaker.amazonaws.com",
            "eventName": "CreateApp",
            "requestParameters": {"domainId": domain.id, "spaceName": domain.space, "appType": "JupyterLab"},
        }
    }
    result = handler(event, None)
    assert result["status"] == "ok", result
    assert _presigned_users(sm) == [(domain.user, domain.space)]


def test_event_user_comes_from_the_request_or_the_source_identity() -> None:
    assert (
        event_user({"detail": {"requestParameters": {"spaceName": "s", "userProfileName": "bob"}}}) == "bob"
    )
    by_identity = {
        "detail": {"requestParameters": {}, "userIdentity": {"sessionContext": {"sourceIdentity": "c"}}}
    }
    assert event_user(by_identity) == "c"
    assert event_user({"detail": {"requestParameters": {"spaceName": "s"}}}) is None
    assert event_user({"spaceName": "s", "userProfileName": "d"}) == "d"


# -- both login flows -----------------------------------------------------------------------------


@pytest.fixture(params=LOGIN_FLOWS)
def flow_sm(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SageMakerEmulator]:
    for name, value in aws_env("unused").items():
        monkeypatch.setenv(name, value)
    with SageMakerEmulator(tmp_path / "sm", pending_s=0.05, login_flow=str(request.param)) as emulator:
        yield emulator


async def test_login_works_through_both_flows_and_reports_an_app_not_ready(
    flow_sm: SageMakerEmulator,
) -> None:
    sm = flow_sm
    domain_id = sm.add_domain()
    sm.add_user_profile(domain_id, "alice")
    sm.add_space(domain_id, "alice-space", owner="alice")
    kwargs: dict[str, Any] = {
        "space": "alice-space",
        "app_type": "JupyterLab",
        "endpoint_url": sm.endpoint_url,
    }

    with pytest.raises(RemoteError, match="is the app InService"):
        await presigned_connection(domain_id, **kwargs)

    sm.client().create_app(
        DomainId=domain_id, SpaceName="alice-space", AppType="JupyterLab", AppName="default"
    )
    app = sm.app(domain_id, "JupyterLab", space="alice-space")
    sm.wait_for(lambda: app.status() == "InService")
    (sm.home(domain_id, "alice-space") / "here.txt").write_text("x")
    conn = await presigned_connection(domain_id, **kwargs)
    async with conn:
        assert conn.base_url == sm.studio_url + "/jupyterlab/default/"
        listing = await conn.get("api/contents")
        assert "here.txt" in {item["name"] for item in listing["content"]}
        terminal = await conn.request("POST", "api/terminals")  # the _xsrf came with the cookies
        await conn.request("DELETE", f"api/terminals/{terminal['name']}")


def test_run_shell_in_a_shared_space_logs_in_as_the_member_named(
    sm: SageMakerEmulator, domain: StudioDomain, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamplighter.cli import main

    sm.add_user_profile(domain.id, "bob")
    _running(sm, domain, domain.shared_space)
    argv = ["run", "shell", "--domain", domain.id, "--space", domain.shared_space, "--login-as", "bob"]
    assert main([*argv, "--", "echo hello from the shared space"]) == 0
    assert "hello from the shared space" in capsys.readouterr().out
    assert _presigned_users(sm) == [("bob", domain.shared_space)]
