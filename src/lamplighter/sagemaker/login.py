"""Logging in to a Studio app from outside: ``CreatePresignedDomainUrl``, then its login redirects.

:func:`presigned_connection` returns a :class:`~lamplighter.remote.connection.Connection` to the app's
Jupyter server, authenticated by the login's cookies. A presigned URL is a credential: it is never logged
and never put in an error message, and the login requests go straight through an httpx transport so
that httpx's own request log never sees them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx

from lamplighter.errors import AuthRejected, ConfigError, ConnectFailed, RemoteError, RemoteTimeout
from lamplighter.remote.connection import Connection
from lamplighter.sagemaker.client import call, sagemaker_client
from lamplighter.sagemaker.identity import jupyter_base_url
from lamplighter.sagemaker.log_guards import guard_httpcore_logs

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = ["presigned_connection", "resolve_user_profile"]

logger = logging.getLogger(__name__)

_MAX_REDIRECTS = 10


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
    guard_httpcore_logs()
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
