"""Calling the SageMaker API: the boto3 client, :func:`call` with retry, and the few calls shared by the rest.

boto3 is the optional extra ``lamplighter[sagemaker]``; it is imported only when a client is made. It is
synchronous, so every call runs in a worker thread (:func:`call`). Credentials are found the way boto3
finds them: inside Studio that is the container credentials endpoint named by
``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, which a process started by the lifecycle script inherits.
botocore errors are translated into lamplighter's error tree here and nowhere else (:func:`_translate`):
a failed call is a :class:`~lamplighter.errors.SageMakerCallFailed` carrying AWS's error code, missing
credentials or a bad parameter a :class:`~lamplighter.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lamplighter.errors import (
    ConfigError,
    LamplighterError,
    PlatformError,
    RemoteTimeout,
    SageMakerCallFailed,
)
from lamplighter.retry import Backoff, attempts
from lamplighter.sagemaker.identity import AppIdentity, StudioApp
from lamplighter.sagemaker.log_guards import guard_botocore_logs

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = [
    "ACCESS_DENIED_CODES",
    "RetryPolicy",
    "call",
    "describe_app",
    "list_apps",
    "sagemaker_client",
    "wait_until_in_service",
]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "the SageMaker support needs boto3: pip install 'lamplighter[sagemaker]'"

# Error codes worth another try: throttling, and the service's own transient failures.
_RETRYABLE = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
#: The error codes of a call the IAM role may not make.
ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "NotAuthorized", "UnauthorizedOperation"}
)
_EXPIRED = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How throttled or transiently failing calls are retried: up to ``attempts`` calls spaced by ``backoff``.

    The default jitter keeps many agents throttled by one account from retrying in step.
    """

    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(first_s=0.5, longest_s=8.0, jitter=0.5))


def sagemaker_client(*, region: str | None = None, endpoint_url: str | None = None) -> SageMakerClient:
    """A boto3 SageMaker client; raises ``ConfigError`` if boto3 is missing or no region is known.

    botocore's own retries are off (one attempt): :func:`call` retries, so there is one retry policy.
    """
    try:
        import boto3
        import botocore.session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=30
    )
    guard_botocore_logs()
    # A fresh session per client (credentials are looked up anew), sharing the parsed service models.
    core = botocore.session.Session()
    core.register_component("data_loader", _shared_loader())
    try:
        return boto3.session.Session(botocore_session=core).client(
            "sagemaker", region_name=region, endpoint_url=endpoint_url, config=config
        )
    except BotoCoreError as exc:
        raise ConfigError(f"cannot make a SageMaker client: {exc}; pass --region or set AWS_REGION") from None
    except ValueError:  # a malformed endpoint URL
        raise ConfigError("sagemaker_endpoint_url: not a valid URL") from None


@functools.cache
def _shared_loader() -> Any:
    """botocore's model loader, kept: parsing the SageMaker model costs a few hundred ms per client."""
    from botocore.loaders import create_loader

    return create_loader()


def _method_name(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


async def call(
    client: SageMakerClient | Any, operation: str, *, retry: RetryPolicy | None = None, **params: Any
) -> dict[str, Any]:
    """Call one SageMaker operation (``"DeleteApp"``) in a worker thread, retrying throttling with backoff.

    Raises :class:`SageMakerCallFailed` (or ``ConfigError`` for missing credentials); never a botocore error.
    """
    retry = retry or RetryPolicy()
    method = getattr(client, _method_name(operation))
    async for attempt in attempts(retry.backoff, max_attempts=retry.attempts):
        try:
            answer = await asyncio.to_thread(method, **params)
        except Exception as exc:
            error = _translate(exc, operation, _iam_action(client, operation))
            if error is None:
                raise
            if isinstance(error, SageMakerCallFailed) and error.code in _RETRYABLE and not attempt.last:
                logger.debug("%s: %s; retrying in %.2fs", operation, error.code, attempt.delay_s)
                continue
            raise error from exc
        return dict(answer)
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises


#: IAM action prefixes that are not the service's signing name.
_IAM_PREFIXES = {"monitoring": "cloudwatch"}


def _iam_action(client: Any, operation: str) -> str:
    """The IAM action a call needs (``logs:FilterLogEvents``): the same helper calls several services."""
    model = getattr(getattr(client, "meta", None), "service_model", None)
    name = str(getattr(model, "signing_name", None) or "sagemaker")
    return f"{_IAM_PREFIXES.get(name, name)}:{operation}"


def _translate(exc: Exception, operation: str, action: str) -> LamplighterError | None:
    """The one place botocore errors become lamplighter errors; ``None`` for what is not botocore's."""
    try:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            NoCredentialsError,
            NoRegionError,
            ParamValidationError,
            PartialCredentialsError,
        )
    except ImportError:  # pragma: no cover - a client exists, so botocore does
        return None
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "").splitlines()[0][:300] if error.get("Message") else ""
        if code in ACCESS_DENIED_CODES:
            text = f"{operation}: access denied; the IAM role needs {action}"
        elif code in _EXPIRED:
            text = f"{operation}: the AWS credentials were rejected ({code})"
        else:
            text = f"{operation}: {code}" + (f": {message}" if message else "")
        return SageMakerCallFailed(text, operation=operation, code=code)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ConfigError(
            f"{operation}: no AWS credentials found (boto3 looks at the environment, ~/.aws and the "
            "container or instance role)"
        )
    if isinstance(exc, NoRegionError):
        return ConfigError(f"{operation}: no AWS region; pass --region or set AWS_REGION")
    if isinstance(exc, ParamValidationError):
        return ConfigError(f"{operation}: invalid parameters: {str(exc).splitlines()[-1][:300]}")
    if isinstance(exc, ConnectionError):
        # Transient network trouble retries like throttling does.
        return SageMakerCallFailed(
            f"{operation}: cannot reach the SageMaker API ({type(exc).__name__})",
            operation=operation,
            code="ServiceUnavailable",
        )
    if isinstance(exc, BotoCoreError):
        return SageMakerCallFailed(
            f"{operation}: {type(exc).__name__}", operation=operation, code=type(exc).__name__
        )
    return None


async def describe_app(client: SageMakerClient | Any, identity: AppIdentity) -> StudioApp | None:
    """DescribeApp; ``None`` when the app does not exist."""
    try:
        answer = await call(client, "DescribeApp", retry=None, **identity.api_params())
    except SageMakerCallFailed as exc:
        if exc.code == "ResourceNotFound":
            return None
        raise
    return StudioApp.from_api(answer, identity.region)


async def list_apps(
    client: SageMakerClient | Any, domain_id: str, *, page_size: int = 100, region: str | None = None
) -> list[StudioApp]:
    """Every app of a domain, all pages of ListApps (it has no status or type filter: filter the result)."""
    apps: list[StudioApp] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"DomainIdEquals": domain_id, "MaxResults": page_size}
        if token:
            params["NextToken"] = token
        answer = await call(client, "ListApps", **params)
        for item in answer.get("Apps") or []:
            try:
                apps.append(StudioApp.from_api(item, region))
            except ConfigError as exc:  # an app type we cannot name (no space, no user profile)
                logger.warning("ListApps: skipping an app: %s", exc)
        token = answer.get("NextToken")
        if not token:
            return apps


async def wait_until_in_service(
    client: SageMakerClient | Any,
    identity: AppIdentity,
    *,
    timeout_s: float = 600.0,
    poll_interval_s: float = 5.0,
) -> StudioApp:
    """Poll DescribeApp until the app is InService (bounded).

    The first looks come quickly (0.25 s, doubling) and then every ``poll_interval_s``. Raises
    ``PlatformError`` when the app is Failed, Deleting or Deleted, and ``RemoteTimeout`` when it is still
    Pending (or not yet visible: CreateApp may be in flight) after ``timeout_s``.
    """
    last = "not found"
    async for _ in attempts(Backoff(longest_s=poll_interval_s), timeout_s=timeout_s):
        app = await describe_app(client, identity)
        if app is not None:
            last = app.status
            if app.status == "InService":
                return app
            if app.status == "Failed":
                raise PlatformError(
                    f"app {identity.label} failed to start: {app.failure_reason or 'no reason given'}"
                )
            if app.status in ("Deleting", "Deleted"):
                raise PlatformError(f"app {identity.label} is {app.status}; it will not come up")
    raise RemoteTimeout(f"app {identity.label} not InService after {timeout_s:.0f} s (last status: {last})")
