"""AWS Lambda entry point: run the on-start script in a SageMaker Studio app that was just created.

Deployed by ``deploy/sam/template.yaml``: a CloudTrail trail records SageMaker's management events, an
EventBridge rule matches ``CreateApp`` calls that succeeded (``source: aws.sagemaker``,
``detail.eventSource: sagemaker.amazonaws.com``, no ``errorCode``) and invokes :func:`handler`, which
reads ``detail.requestParameters`` (``domainId``, ``spaceName`` or ``userProfileName``, ``appType``,
``appName``) and calls :func:`lamplighter.sagemaker.onstart.run_on_start`. The event may also be just the
``requestParameters`` (an ``InputPath`` of ``$.detail.requestParameters``).

The script never comes from the event: anyone who can call CreateApp could otherwise run code as any
user. It comes from the function's configuration, read through the one settings declaration
(:func:`lamplighter.settings.load_settings`, group ``onstart``), so each setting has the usual
``LAMPLIGHTER_<NAME>`` environment variable (a TOML file named by ``LAMPLIGHTER_CONFIG`` works too):

- ``LAMPLIGHTER_ONSTART_SCRIPT``: the script text (Lambda environment variables hold 4 KB in all); or
- ``LAMPLIGHTER_ONSTART_SCRIPT_URI``: an ``s3://bucket/key`` the function may read.

Other settings: ``LAMPLIGHTER_ONSTART_APP_TYPES`` (comma-separated, default ``JupyterLab,JupyterServer``),
``LAMPLIGHTER_ONSTART_DOMAINS`` (comma-separated domain ids; empty means all),
``LAMPLIGHTER_ONSTART_LOGIN_AS`` (the user profile to log in as for shared spaces; a private space is
always logged in to as its owner, and without it a shared space takes the event's user profile when that
is in the domain, see :func:`event_user`),
``LAMPLIGHTER_ONSTART_READY_TIMEOUT`` (how long to wait for the app, default 600 s, capped by the time the
invocation has left), ``LAMPLIGHTER_SAGEMAKER_ENDPOINT_URL`` (a VPC endpoint, or the tests' emulator) and
``LAMPLIGHTER_VERIFY_TLS``.

The deployed handler name stays ``lamplighter.aws_lambda.handler`` (a re-export of :func:`handler`), so
stacks deployed before this module moved keep working.

The handler never raises for an expected failure: it logs one JSON line and returns a dict with
``status`` ``ok`` (exit status 0), ``failed`` (the script exited non-zero), ``error`` (the app failed,
timed out, or access was denied) or ``skipped`` (not an event for us). Raising would make Lambda retry
the invocation and run the script again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lamplighter.errors import ConfigError, LamplighterError
from lamplighter.redaction import guard_handlers
from lamplighter.sagemaker.identity import JUPYTER_APP_TYPES, AppIdentity
from lamplighter.sagemaker.onstart import run_on_start
from lamplighter.settings import Settings, load_settings

__all__ = ["OnStartConfig", "app_from_event", "event_user", "handler", "load_script"]

logger = logging.getLogger(__name__)

_MARGIN_S = 20.0  # left for reporting when the invocation's time runs out


class _EventSkipped(Exception):
    """Raised by :func:`app_from_event` for an event that is not a successful CreateApp we handle."""


@dataclass(frozen=True)
class OnStartConfig:
    """The function's configuration: the ``onstart`` settings, checked (see the module docstring)."""

    script: str | None
    script_uri: str | None
    app_types: tuple[str, ...]
    domains: tuple[str, ...]
    ready_timeout_s: float
    endpoint_url: str | None
    verify_tls: bool
    login_as: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OnStartConfig:
        return cls.from_settings(load_settings(env=env))

    @classmethod
    def from_settings(cls, settings: Settings) -> OnStartConfig:
        script, uri = settings.onstart_script, settings.onstart_script_uri
        if bool(script) == bool(uri):
            raise ConfigError(
                "set exactly one of LAMPLIGHTER_ONSTART_SCRIPT and LAMPLIGHTER_ONSTART_SCRIPT_URI"
            )
        if uri and not uri.startswith("s3://"):
            raise ConfigError("LAMPLIGHTER_ONSTART_SCRIPT_URI: expected s3://bucket/key")
        types = settings.onstart_app_types or JUPYTER_APP_TYPES
        unknown = [t for t in types if t not in JUPYTER_APP_TYPES]
        if unknown:
            raise ConfigError(
                f"LAMPLIGHTER_ONSTART_APP_TYPES: {', '.join(unknown)} has no Jupyter server to run a script in"
            )
        return cls(
            script=script,
            script_uri=uri,
            app_types=types,
            domains=settings.onstart_domains,
            ready_timeout_s=settings.onstart_ready_timeout.total_seconds(),
            endpoint_url=settings.sagemaker_endpoint_url,
            verify_tls=settings.verify_tls,
            login_as=settings.onstart_login_as,
        )


def app_from_event(event: Mapping[str, Any], config: OnStartConfig) -> AppIdentity:
    """The app a CreateApp event names; raises :class:`_EventSkipped` for events we do not handle."""
    detail = event.get("detail")
    if isinstance(detail, Mapping):
        if detail.get("eventSource") not in (None, "sagemaker.amazonaws.com"):
            raise _EventSkipped(f"event source {detail.get('eventSource')!r} is not SageMaker")
        if detail.get("eventName") not in (None, "CreateApp"):
            raise _EventSkipped(f"event {detail.get('eventName')!r} is not CreateApp")
        if detail.get("errorCode"):
            raise _EventSkipped(f"CreateApp failed ({detail.get('errorCode')})")
        params = detail.get("requestParameters")
        region = detail.get("awsRegion") or event.get("region")
    else:
        params, region = event, None
    if not isinstance(params, Mapping):
        raise _EventSkipped("the event has no requestParameters")

    def get(name: str) -> str | None:
        value = params.get(name[0].lower() + name[1:], params.get(name))
        return str(value) if value else None

    domain, app_type = get("DomainId"), get("AppType")
    if not domain or not app_type:
        raise _EventSkipped("the event names no domainId or appType")
    if app_type not in config.app_types:
        raise _EventSkipped(f"app type {app_type} is not configured for on-start")
    if config.domains and domain not in config.domains:
        raise _EventSkipped(f"domain {domain} is not configured for on-start")
    space, user = get("SpaceName"), get("UserProfileName")
    if not (space or user):
        raise _EventSkipped("the event names no spaceName or userProfileName")
    return AppIdentity(
        domain_id=domain,
        app_type=app_type,
        app_name=get("AppName") or "default",
        space_name=space,
        user_profile_name=None if space else user,
        region=str(region) if region else None,
    )


def event_user(event: Mapping[str, Any]) -> str | None:
    """The user profile the event says made the call, if it says: a hint for shared spaces only.

    CloudTrail carries it as ``requestParameters.userProfileName`` (beside ``spaceName``) or, on domains
    with ``ExecutionRoleIdentityConfig: USER_PROFILE_NAME``, as the session's ``sourceIdentity``. It is
    a hint, not a credential: the login checks that the profile is a member of the domain, and a private
    space is always logged in to as its owner whatever the event says.
    """
    detail = event.get("detail")
    source = detail if isinstance(detail, Mapping) else {}
    params = source.get("requestParameters") if source else event
    if isinstance(params, Mapping):
        named = params.get("userProfileName") or params.get("UserProfileName")
        if isinstance(named, str) and named:
            return named
    identity = source.get("userIdentity") if source else None
    if isinstance(identity, Mapping):
        context = identity.get("sessionContext")
        found = identity.get("sourceIdentity") or (
            context.get("sourceIdentity") if isinstance(context, Mapping) else None
        )
        if isinstance(found, str) and found:
            return found
    return None


def load_script(config: OnStartConfig) -> str:
    """The script text, from the environment or from S3; raises ``ConfigError``."""
    if config.script or not config.script_uri:
        return config.script or ""
    bucket, _, key = config.script_uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ConfigError("LAMPLIGHTER_ONSTART_SCRIPT_URI: expected s3://bucket/key")
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ConfigError("the Lambda handler needs boto3: pip install 'lamplighter[sagemaker]'") from None
    try:
        body = boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise ConfigError(f"cannot read the script {config.script_uri}: {code}") from None
    except BotoCoreError as exc:
        raise ConfigError(f"cannot read the script {config.script_uri}: {type(exc).__name__}") from None
    return bytes(body).decode("utf-8")


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function: run the configured script in the app the CreateApp event names."""
    logging.getLogger("lamplighter").setLevel(logging.INFO)
    guard_handlers(logging.getLogger().handlers)  # the runtime's handlers: no secret in CloudWatch
    began = time.monotonic()
    remaining_s = _remaining_s(context)
    label = "?"
    try:
        config = OnStartConfig.from_env(os.environ)
        app = app_from_event(event, config)
        label = app.label
        script = load_script(config)
        budget = None if remaining_s is None else remaining_s - _MARGIN_S - (time.monotonic() - began)
        ready = config.ready_timeout_s if budget is None else max(1.0, min(config.ready_timeout_s, budget))
        result = asyncio.run(
            _run(
                app,
                script,
                config,
                ready_timeout_s=ready,
                budget_s=budget,
                began=time.monotonic(),
                event_user=event_user(event) if app.space_name else None,
            )
        )
    except _EventSkipped as exc:
        return _report(logging.INFO, {"status": "skipped", "reason": str(exc)})
    except LamplighterError as exc:
        return _report(logging.ERROR, {"status": "error", "app": label, "error": str(exc)})
    return _report(
        logging.INFO if result["ok"] else logging.ERROR,
        {"status": "ok" if result["ok"] else "failed", **result},
    )


async def _run(
    app: AppIdentity,
    script: str,
    config: OnStartConfig,
    *,
    ready_timeout_s: float,
    budget_s: float | None,
    began: float,
    event_user: str | None = None,
) -> dict[str, Any]:
    # The script gets whatever the invocation has left once the app is ready.
    result = await run_on_start(
        app,
        script,
        endpoint_url=config.endpoint_url,
        verify_tls=config.verify_tls,
        login_as=config.login_as,
        event_user=event_user,
        ready_timeout_s=ready_timeout_s,
        run_timeout_s=None if budget_s is None else max(1.0, budget_s - (time.monotonic() - began)),
    )
    return result.to_json()


def _remaining_s(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return float(remaining()) / 1000.0 if callable(remaining) else None


def _report(level: int, record: dict[str, Any]) -> dict[str, Any]:
    logger.log(level, "%s", json.dumps(record, sort_keys=True))
    return record
