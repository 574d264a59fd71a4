"""SageMaker Studio: which app we are, calling the SageMaker API, stopping an app, logging in to one.

An app is named by its domain, its owner (a space in new Studio, a user profile in Studio Classic), its
type and its name (:class:`AppIdentity`). Inside an app the identity comes from
``/opt/ml/metadata/resource-metadata.json``. The app is probed through its Jupyter API like any Jupyter
server (:mod:`lamplighter.platforms.jupyter`); only stopping differs: :class:`SageMakerStopper` calls
``DeleteApp`` and verifies with ``DescribeApp``.

boto3 is the optional extra ``lamplighter[sagemaker]``; it is imported only when a client is made. It is
synchronous, so every call runs in a worker thread (:func:`call`). Credentials are found the way boto3
finds them: inside Studio that is the container credentials endpoint named by
``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, which a process started by the lifecycle script inherits.
botocore errors are translated into lamplighter's error tree here and nowhere else
(:func:`_translate`).

:func:`presigned_connection` logs in to an app from outside with ``CreatePresignedDomainUrl``. A
presigned URL is a credential: it is never logged and never put in an error message, and the login
requests go straight through an httpx transport so that httpx's own request log never sees them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from lamplighter.errors import (
    AuthRejected,
    ConfigError,
    ConnectFailed,
    LamplighterError,
    PlatformError,
    RemoteError,
    RemoteTimeout,
    SageMakerCallFailed,
    Unsupported,
)
from lamplighter.model import Decision, StopOutcome, StopResult, parse_timestamp
from lamplighter.remote.connection import Connection
from lamplighter.retry import Backoff

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = [
    "DEFAULT_METADATA_PATH",
    "JUPYTER_APP_TYPES",
    "AppIdentity",
    "RetryPolicy",
    "SageMakerCallFailed",
    "SageMakerStopper",
    "StudioApp",
    "call",
    "describe_app",
    "jupyter_base_url",
    "list_apps",
    "presigned_connection",
    "resolve_user_profile",
    "sagemaker_client",
    "wait_until_in_service",
]

logger = logging.getLogger(__name__)

DEFAULT_METADATA_PATH = Path("/opt/ml/metadata/resource-metadata.json")
JUPYTER_APP_TYPES = ("JupyterLab", "JupyterServer")
_JUPYTER_BASES = {"JupyterLab": "/jupyterlab/default/", "JupyterServer": "/jupyter/default/"}
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
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "NotAuthorized", "UnauthorizedOperation"})
_EXPIRED = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId"}
)
_MAX_REDIRECTS = 10


def jupyter_base_url(app_type: str) -> str:
    """The Jupyter base path of an app type: ``/jupyterlab/default/``, or ``/jupyter/default/`` (Classic)."""
    try:
        return _JUPYTER_BASES[app_type]
    except KeyError:
        raise Unsupported(
            f"SageMaker {app_type} apps have no Jupyter server (only {', '.join(JUPYTER_APP_TYPES)})"
        ) from None


# -- identity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppIdentity:
    """One Studio app: domain, owner (space, or user profile for Studio Classic), type and name.

    ``region`` is where the domain lives; ``None`` means boto3's default region.
    """

    domain_id: str
    app_type: str
    app_name: str = "default"
    space_name: str | None = None
    user_profile_name: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if not self.domain_id or not self.app_type or not self.app_name:
            raise ConfigError("a SageMaker app needs a domain id, an app type and an app name")
        if not (self.space_name or self.user_profile_name):
            raise ConfigError(
                f"SageMaker app {self.domain_id}/{self.app_type}: needs a space or a user profile"
            )

    @classmethod
    def from_metadata(cls, path: Path | None = None) -> AppIdentity:
        """Read the app's own identity from its resource-metadata file; raises ``ConfigError``."""
        path = path or DEFAULT_METADATA_PATH
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: not found; is this a SageMaker Studio app? (--sagemaker-metadata)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{path}: not valid JSON") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_metadata_dict(data, source=str(path))

    @classmethod
    def from_metadata_dict(cls, data: Mapping[str, Any], *, source: str = "resource metadata") -> AppIdentity:
        """Build from ``DomainId``, ``AppType``, ``ResourceName``, ``SpaceName`` or ``UserProfileName``.

        The region is the fourth field of ``ResourceArn``.
        """

        def text(key: str) -> str | None:
            value = data.get(key)
            return value.strip() if isinstance(value, str) and value.strip() else None

        missing = [key for key in ("DomainId", "AppType", "ResourceName") if not text(key)]
        if missing:
            raise ConfigError(f"{source}: missing {', '.join(missing)}")
        space, user = text("SpaceName"), text("UserProfileName")
        if not (space or user):
            raise ConfigError(f"{source}: names neither a SpaceName nor a UserProfileName")
        arn = text("ResourceArn") or ""
        arn_parts = arn.split(":")
        region = arn_parts[3] if len(arn_parts) > 5 and arn_parts[3] else None
        return cls(
            domain_id=text("DomainId") or "",
            app_type=text("AppType") or "",
            app_name=text("ResourceName") or "",
            # A space app is addressed by its space alone, even when the owner is also named.
            space_name=space,
            user_profile_name=None if space else user,
            region=region,
        )

    @property
    def owner(self) -> str:
        return self.space_name or self.user_profile_name or ""

    @property
    def label(self) -> str:
        """``d-abc/space:s1/JupyterLab/default``: safe to log."""
        kind = "space" if self.space_name else "user"
        return f"{self.domain_id}/{kind}:{self.owner}/{self.app_type}/{self.app_name}"

    def api_params(self) -> dict[str, str]:
        """The parameters DescribeApp and DeleteApp take."""
        params = {"DomainId": self.domain_id, "AppType": self.app_type, "AppName": self.app_name}
        if self.space_name:
            params["SpaceName"] = self.space_name
        else:
            params["UserProfileName"] = self.user_profile_name or ""
        return params


@dataclass(frozen=True)
class StudioApp:
    """An app as ListApps or DescribeApp reports it."""

    identity: AppIdentity
    status: str  # Pending | InService | Deleting | Deleted | Failed
    created_at: datetime | None
    failure_reason: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any], region: str | None = None) -> StudioApp:
        created = data.get("CreationTime")
        try:
            created_at = parse_timestamp(created) if created else None
        except ValueError:
            created_at = None
        identity = AppIdentity(
            domain_id=str(data.get("DomainId") or ""),
            app_type=str(data.get("AppType") or ""),
            app_name=str(data.get("AppName") or ""),
            space_name=data.get("SpaceName") or None,
            user_profile_name=None if data.get("SpaceName") else (data.get("UserProfileName") or None),
            region=region,
        )
        reason = data.get("FailureReason")
        return cls(
            identity, str(data.get("Status") or "Unknown"), created_at, str(reason) if reason else None
        )


# -- the SageMaker API ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How throttled or transiently failing calls are retried: exponential backoff with jitter."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay_s, self.base_delay_s * 2**attempt) * random.uniform(0.5, 1.0))


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
    _guard_botocore_logs()
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


class _RedactPresignedUrls(logging.Filter):
    """Blanks botocore's debug copy of a response body that holds a presigned URL (a login credential)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "AuthorizedUrl" in record.getMessage():
            record.msg, record.args = "Response body: <redacted by lamplighter: holds a presigned URL>", ()
        return True


class _RedactHeaders(logging.Filter):
    """Blanks cookie and redirect headers in httpcore's debug trace (a login redirect carries tokens)."""

    _HEADER = re.compile(
        r"""\((b['"](?:set-cookie|cookie|location)['"]), (?:b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")\)""",
        re.IGNORECASE,
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._HEADER.sub(r"(\1, b'<redacted>')", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _add_filter(name: str, kind: type[logging.Filter]) -> None:
    log = logging.getLogger(name)
    if not any(isinstance(f, kind) for f in log.filters):
        log.addFilter(kind())


def _guard_botocore_logs() -> None:
    # botocore.parsers logs every response body at debug level, CreatePresignedDomainUrl's included.
    _add_filter("botocore.parsers", _RedactPresignedUrls)


def _guard_httpcore_logs() -> None:
    # httpcore's debug trace prints response headers: Set-Cookie, and Location with a login token.
    for name in ("httpcore.http11", "httpcore.http2"):
        _add_filter(name, _RedactHeaders)


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
    attempt = 0
    while True:
        try:
            answer = await asyncio.to_thread(method, **params)
        except Exception as exc:
            error = _translate(exc, operation)
            if error is None:
                raise
            if (
                isinstance(error, SageMakerCallFailed)
                and error.code in _RETRYABLE
                and attempt + 1 < retry.attempts
            ):
                delay = retry.delay(attempt)
                logger.debug("%s: %s; retrying in %.2fs", operation, error.code, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            raise error from exc
        return dict(answer)


def _translate(exc: Exception, operation: str) -> LamplighterError | None:
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
        if code in _DENIED:
            text = f"{operation}: access denied; the IAM role needs sagemaker:{operation}"
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
    deadline = time.monotonic() + timeout_s
    last = "not found"
    for delay in Backoff(longest_s=poll_interval_s).delays():
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
        if time.monotonic() + delay > deadline:
            raise RemoteTimeout(
                f"app {identity.label} not InService after {timeout_s:.0f} s (last status: {last})"
            )
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the delays never end


# -- stopping -------------------------------------------------------------------------------------


class SageMakerStopper:
    """Stops a Studio app with ``DeleteApp`` and verifies it with ``DescribeApp``.

    An app that is already deleting, deleted or gone counts as stopped (or stopping). After DeleteApp
    is accepted, DescribeApp is polled for up to ``verify_timeout_s``: ``Deleted`` (or gone) is STOPPED;
    anything else by then is STOPPING, and the agent looks again on its next pass. Expected failures
    (access denied, throttled past the retries, bad credentials) come back as FAILED with one line.
    """

    def __init__(
        self,
        identity: AppIdentity,
        *,
        endpoint_url: str | None = None,
        client: SageMakerClient | Any | None = None,
        verify_timeout_s: float = 5.0,
        poll_interval_s: float = 0.5,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.identity = identity
        self._client = client or sagemaker_client(region=identity.region, endpoint_url=endpoint_url)
        self._verify_timeout_s = verify_timeout_s
        self._poll_interval_s = poll_interval_s
        self._retry = retry or RetryPolicy()

    @property
    def description(self) -> str:
        return f"DeleteApp {self.identity.label}"

    async def stop(self, decision: Decision) -> StopResult:
        try:
            return await self._stop()
        except LamplighterError as exc:
            return StopResult(StopOutcome.FAILED, _one_line(str(exc)))

    async def _stop(self) -> StopResult:
        label = self.identity.label
        try:
            await call(self._client, "DeleteApp", retry=self._retry, **self.identity.api_params())
            logger.info("DeleteApp %s accepted", label)
        except SageMakerCallFailed as exc:
            if exc.code == "ResourceNotFound":
                return StopResult(StopOutcome.STOPPED, f"app {label} does not exist (already deleted)")
            if exc.code not in ("ResourceInUse", "ValidationException"):
                if exc.code in _DENIED:
                    return StopResult(
                        StopOutcome.FAILED,
                        f"DeleteApp {label}: access denied; give the app's execution role "
                        f"sagemaker:DeleteApp on arn:aws:sagemaker:*:*:app/{self.identity.domain_id}/*",
                    )
                raise
            # A conflict usually means it is already going away; ask instead of parsing the message.
            app = await self._describe_or_none(exc)
            if app is None or app.status == "Deleted":
                return StopResult(StopOutcome.STOPPED, f"app {label} already deleted")
            if app.status != "Deleting":
                return StopResult(StopOutcome.FAILED, _one_line(f"{exc} (app is {app.status})"))
        return await self._verify()

    async def _describe_or_none(self, original: SageMakerCallFailed) -> StudioApp | None:
        try:
            return await describe_app(self._client, self.identity)
        except LamplighterError as exc:
            raise SageMakerCallFailed(
                f"{original}; and cannot check the app: {exc}", operation="DeleteApp", code=original.code
            ) from exc

    async def _verify(self) -> StopResult:
        label = self.identity.label
        deadline = time.monotonic() + self._verify_timeout_s
        while True:
            try:
                app = await describe_app(self._client, self.identity)
            except LamplighterError as exc:
                return StopResult(
                    StopOutcome.STOPPING, _one_line(f"DeleteApp {label} accepted; cannot verify: {exc}")
                )
            if app is None or app.status == "Deleted":
                return StopResult(StopOutcome.STOPPED, f"app {label} deleted")
            if time.monotonic() >= deadline:
                return StopResult(
                    StopOutcome.STOPPING, f"DeleteApp {label} accepted; the app is still {app.status}"
                )
            await asyncio.sleep(self._poll_interval_s)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


# -- logging in from outside ----------------------------------------------------------------------


async def resolve_user_profile(client: SageMakerClient | Any, domain_id: str, space: str) -> str:
    """The owner of a private space (presigned URLs are made for a user profile)."""
    answer = await call(client, "DescribeSpace", DomainId=domain_id, SpaceName=space)
    owner = (answer.get("OwnershipSettings") or {}).get("OwnerUserProfileName")
    if not owner:
        raise ConfigError(
            f"space {space} has no owner (a shared space); name a user profile to log in as (--login-as)"
        )
    return str(owner)


async def presigned_connection(
    domain_id: str,
    *,
    user_profile: str | None = None,
    space: str | None = None,
    app_type: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    verify_tls: bool = True,
    client: SageMakerClient | Any | None = None,
    timeout_s: float = 30.0,
    session_expiration_s: int | None = None,
) -> Connection:
    """Log in to a Studio app's Jupyter server through ``CreatePresignedDomainUrl``; the caller closes it.

    Follows the login redirects keeping the cookies, lands on the app's Jupyter base URL, and checks that
    ``api/status`` answers with those cookies. With only ``space``, logs in as the space's owner.
    ``session_expiration_s`` (1800 to 43200) bounds how long the login cookies stay valid (AWS: 12 h).
    Raises ``AuthRejected`` when the login is refused, ``RemoteError`` when it does not reach the app
    (not InService yet?), ``SageMakerCallFailed`` when the API call fails.
    """
    if not (user_profile or space):
        raise ConfigError("a presigned login needs a user profile or a space")
    base_path = jupyter_base_url(app_type)
    client = client or sagemaker_client(region=region, endpoint_url=endpoint_url)
    if not user_profile and space:
        user_profile = await resolve_user_profile(client, domain_id, space)
    params: dict[str, Any] = {
        "DomainId": domain_id,
        "UserProfileName": user_profile,
        "ExpiresInSeconds": 60,
        "LandingUri": f"app:{app_type}:",
    }
    if space:
        params["SpaceName"] = space
    if session_expiration_s is not None:
        params["SessionExpirationDurationInSeconds"] = session_expiration_s
    answer = await call(client, "CreatePresignedDomainUrl", **params)
    authorized = str(answer.get("AuthorizedUrl") or "")
    where = f"{domain_id}/{space or user_profile}/{app_type}"
    if not authorized:
        raise RemoteError(f"CreatePresignedDomainUrl for {where} returned no URL")
    final_url, status, cookies = await _follow_login(
        authorized, verify_tls=verify_tls, timeout_s=timeout_s, where=where
    )
    if status in (401, 403):
        raise AuthRejected(f"the presigned login to {where} was refused (HTTP {status})", status=status)
    path = final_url.path
    index = path.find(base_path)
    if index < 0:
        raise RemoteError(
            f"the presigned login to {where} landed on {final_url.host}{path} (HTTP {status}), not on the "
            f"{app_type} app; is the app InService?",
            status=status,
        )
    base_url = str(final_url.copy_with(path=path[: index + len(base_path)], query=None, fragment=None))
    conn = Connection(
        base_url, cookies=_cookies_for(cookies, base_url), verify_tls=verify_tls, timeout_s=timeout_s
    )
    try:
        await conn.get("api/status")
    except BaseException:
        await conn.aclose()
        raise
    logger.debug("logged in to %s at %s", where, conn.display_url)
    return conn


async def _follow_login(
    url: str, *, verify_tls: bool, timeout_s: float, where: str
) -> tuple[httpx.URL, int, httpx.Cookies]:
    """GET the presigned URL and its redirects with a cookie jar; (final URL, final status, jar).

    Straight through a transport, not an ``AsyncClient``: the client logs every request URL at INFO,
    and these URLs carry one-time login tokens.
    """
    _guard_httpcore_logs()
    jar = httpx.Cookies()
    current = httpx.URL(url)
    timeout = httpx.Timeout(timeout_s).as_dict()
    async with httpx.AsyncHTTPTransport(verify=verify_tls) as transport:
        for _ in range(_MAX_REDIRECTS):
            request = httpx.Request(
                "GET",
                current,
                headers={"User-Agent": "lamplighter", "Accept": "text/html"},
                extensions={"timeout": timeout},
            )
            jar.set_cookie_header(request)
            try:
                response = await transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            except httpx.TimeoutException:
                raise RemoteTimeout(
                    f"the presigned login to {where}: no answer within {timeout_s:.0f} s"
                ) from None
            except httpx.HTTPError as exc:
                # The message of an httpx error can quote the URL: name the kind only.
                raise ConnectFailed(
                    f"the presigned login to {where}: cannot connect ({type(exc).__name__})"
                ) from None
            response.request = request
            jar.extract_cookies(response)
            location = response.headers.get("location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                current = current.join(location)
                continue
            return current, response.status_code, jar
    raise RemoteError(f"the presigned login to {where}: more than {_MAX_REDIRECTS} redirects")


def _cookies_for(jar: httpx.Cookies, url: str) -> dict[str, str]:
    """The cookies the jar would send to ``url`` (domain and path rules applied), as a flat mapping."""
    probe = httpx.Request("GET", url)
    jar.set_cookie_header(probe)
    header = probe.headers.get("cookie", "")
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            cookies[name] = value
    return cookies
