"""Logging in to a Studio app from outside: ``CreatePresignedDomainUrl``, then its login redirects.

:func:`presigned_connection` returns a :class:`~lamplighter.remote.connection.Connection` to the app's
Jupyter server, authenticated by the login's cookies. The login is made for the right user
(:func:`resolve_user_profile`: a private space's owner, never anyone else). Two login flows are handled:
the redirects end on the app's base path; or they end elsewhere (Studio's page, an HTML/JS redirect), and
the app is at the presigned URL's host plus its base path with the session cookies, as the AWS samples
take it, with Studio's ``/app?appType=…`` status page saying whether it is ready. A presigned URL is a credential: it is never logged
and never put in an error message, and the login requests go straight through an httpx transport so
that httpx's own request log never sees them.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import httpx

from lamplighter.errors import (
    AuthRejected,
    ConfigError,
    ConnectFailed,
    NotFound,
    RemoteError,
    RemoteTimeout,
    SageMakerCallFailed,
)
from lamplighter.remote.connection import Connection
from lamplighter.sagemaker.client import call, sagemaker_client
from lamplighter.sagemaker.identity import jupyter_base_url
from lamplighter.sagemaker.log_guards import guard_httpcore_logs

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

__all__ = ["presigned_connection", "presigned_notebook_instance_connection", "resolve_user_profile"]

logger = logging.getLogger(__name__)

_MAX_REDIRECTS = 10


async def resolve_user_profile(
    client: SageMakerClient | Any,
    domain_id: str,
    space: str,
    *,
    user_profile: str | None = None,
    shared_space_user: str | None = None,
    event_user: str | None = None,
) -> str:
    """The user profile to log in to ``space`` as (presigned URLs are made for a user profile).

    A private space (``SpaceSharingSettings.SharingType: Private``) belongs to its owner
    (``OwnershipSettings``): the login is the owner's, and naming anyone else as ``user_profile`` is
    refused, as SageMaker refuses it. A shared space is open to every user profile of the domain: the
    login is ``user_profile`` if named, else ``shared_space_user`` (the configured one), else
    ``event_user`` (who the CloudTrail event says created the app) when that profile is in the domain,
    else the space's owner (its creator). Raises ``ConfigError`` when no one fits.
    """
    answer = await call(client, "DescribeSpace", DomainId=domain_id, SpaceName=space)
    owner = (answer.get("OwnershipSettings") or {}).get("OwnerUserProfileName") or None
    sharing = (answer.get("SpaceSharingSettings") or {}).get("SharingType") or "Shared"
    if sharing == "Private":
        if not owner:
            raise ConfigError(f"private space {space} names no owner (DescribeSpace OwnershipSettings)")
        if user_profile and user_profile != owner:
            raise ConfigError(
                f"space {space} is private to user profile {owner}; a login as {user_profile} is refused"
            )
        return str(owner)
    if user_profile or shared_space_user:
        return str(user_profile or shared_space_user)
    if event_user and await _is_member(client, domain_id, event_user):
        return event_user
    if owner:
        return str(owner)
    raise ConfigError(
        f"space {space} is a shared space with no owner; name a user profile to log in as (--login-as)"
    )


async def _is_member(client: SageMakerClient | Any, domain_id: str, user_profile: str) -> bool:
    """Whether ``user_profile`` is a user profile of the domain (every one may use a shared space)."""
    try:
        await call(client, "DescribeUserProfile", DomainId=domain_id, UserProfileName=user_profile)
    except SageMakerCallFailed as exc:
        logger.info("user profile %s is not usable in %s: %s", user_profile, domain_id, exc)
        return False
    return True


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
    shared_space_user: str | None = None,
    event_user: str | None = None,
) -> Connection:
    """Log in to a Studio app's Jupyter server through ``CreatePresignedDomainUrl``; the caller closes it.

    Follows the login redirects keeping the cookies, lands on the app's Jupyter base URL, and checks that
    ``api/status`` answers with those cookies. For a space app the user is chosen by
    :func:`resolve_user_profile` (``user_profile``, when given, must be allowed into the space).
    ``session_expiration_s`` (1800 to 43200) bounds how long the login cookies stay valid (AWS: 12 h).
    Raises ``AuthRejected`` when the login is refused, ``RemoteError`` when it does not reach the app
    (not InService yet?), ``SageMakerCallFailed`` when the API call fails.
    """
    if not (user_profile or space):
        raise ConfigError("a presigned login needs a user profile or a space")
    base_path = jupyter_base_url(app_type)
    client = client or sagemaker_client(region=region, endpoint_url=endpoint_url)
    if space:
        user_profile = await resolve_user_profile(
            client,
            domain_id,
            space,
            user_profile=user_profile,
            shared_space_user=shared_space_user,
            event_user=event_user,
        )
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
    where = f"{domain_id}/{space or user_profile}/{app_type}"
    authorized, final_url, cookies, page = await _presigned_login(
        answer, "CreatePresignedDomainUrl", where=where, verify_tls=verify_tls, timeout_s=timeout_s
    )
    base_url = _app_base_url(final_url, page, base_path)
    if base_url is None:
        # The AWS samples' flow: the session cookies are set; the app lives at the presigned URL's host
        # under its base path, and Studio's /app page says whether it is ready yet.
        host = httpx.URL(authorized)
        base_url = str(host.copy_with(path=base_path, query=None, fragment=None))
        ready = await _app_status(
            str(host.copy_with(path="/app", query=None, fragment=None)),
            {"appType": app_type, "appName": "default"},
            cookies,
            verify_tls=verify_tls,
            timeout_s=timeout_s,
        )
        if ready is not None and ready != "InService":
            raise RemoteError(
                f"the presigned login to {where}: Studio says the app is {ready}; is the app InService?"
            )
    return await _checked_connection(
        base_url,
        cookies,
        where=where,
        unreached=f"the {app_type} app at {final_url.host}{base_path} (HTTP 404); is the app InService?",
        verify_tls=verify_tls,
        timeout_s=timeout_s,
    )


_STATUSES = ("Pending", "InService", "Deleting", "Deleted", "Failed", "NotFound", "Terminated")
_PAGE_REDIRECT = re.compile(
    r"""(?:window\.location(?:\.href)?\s*=\s*|location\.replace\(\s*|http-equiv=["']?refresh["']?"""
    r"""[^>]*?url=)["']?([^"'\s;<>)]+)""",
    re.IGNORECASE,
)


def _app_base_url(final_url: httpx.URL, page: str, base_path: str) -> str | None:
    """The app's base URL if the login ended on the app, or on a page whose redirect points into it."""
    candidates = [final_url]
    candidates += [final_url.join(found) for found in _PAGE_REDIRECT.findall(page[:65536])]
    for url in candidates:
        index = url.path.find(base_path)
        if index >= 0:
            return str(url.copy_with(path=url.path[: index + len(base_path)], query=None, fragment=None))
    return None


async def _app_status(
    url: str, params: dict[str, str], jar: httpx.Cookies, *, verify_tls: bool, timeout_s: float
) -> str | None:
    """Studio's plain-text app status (``/app?appType=…&appName=…``), or None if it gives none."""
    request = httpx.Request(
        "GET",
        httpx.URL(url, params=params),
        headers={"User-Agent": "lamplighter"},
        extensions={"timeout": httpx.Timeout(timeout_s).as_dict()},
    )
    jar.set_cookie_header(request)
    try:
        async with httpx.AsyncHTTPTransport(verify=verify_tls) as transport:
            response = await transport.handle_async_request(request)
            try:
                body = (await response.aread())[:256].decode("utf-8", errors="replace").strip()
            finally:
                await response.aclose()
    except httpx.HTTPError:
        return None
    return body if response.status_code == 200 and body in _STATUSES else None


async def _presigned_login(
    answer: dict[str, Any], operation: str, *, where: str, verify_tls: bool, timeout_s: float
) -> tuple[str, httpx.URL, httpx.Cookies, str]:
    """Follow the ``AuthorizedUrl`` that ``operation`` answered: (that URL, final URL, cookie jar, page).

    Raises ``RemoteError`` when there is no URL, ``AuthRejected`` when the login is refused.
    """
    authorized = str(answer.get("AuthorizedUrl") or "")
    if not authorized:
        raise RemoteError(f"{operation} for {where} returned no URL")
    final_url, status, cookies, page = await _follow_login(
        authorized, verify_tls=verify_tls, timeout_s=timeout_s, where=where
    )
    if status in (401, 403):
        raise AuthRejected(f"the presigned login to {where} was refused (HTTP {status})", status=status)
    return authorized, final_url, cookies, page


async def _checked_connection(
    base_url: str, cookies: httpx.Cookies, *, where: str, unreached: str, verify_tls: bool, timeout_s: float
) -> Connection:
    """A connection to ``base_url`` with the login's cookies, once ``api/status`` answers through it.

    A 404 there is ``RemoteError`` "... did not reach {unreached}": the login landed, but not on Jupyter.
    """
    conn = Connection(
        base_url, cookies=_cookies_for(cookies, base_url), verify_tls=verify_tls, timeout_s=timeout_s
    )
    try:
        await conn.get("api/status")
    except NotFound:
        await conn.aclose()
        raise RemoteError(f"the presigned login to {where} did not reach {unreached}", status=404) from None
    except BaseException:
        await conn.aclose()
        raise
    logger.debug("logged in to %s at %s", where, conn.display_url)
    return conn


async def _follow_login(
    url: str, *, verify_tls: bool, timeout_s: float, where: str
) -> tuple[httpx.URL, int, httpx.Cookies, str]:
    """GET the presigned URL and its redirects with a cookie jar; (final URL, status, jar, page text).

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
                    body = await response.aread()
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
            return current, response.status_code, jar, body[:65536].decode("utf-8", errors="replace")
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


# -- notebook instances --------------------------------------------------------------------------


async def presigned_notebook_instance_connection(
    name: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    verify_tls: bool = True,
    client: SageMakerClient | Any | None = None,
    timeout_s: float = 30.0,
    session_expiration_s: int = 1800,
) -> Connection:
    """Log in to a notebook instance's Jupyter server through ``CreatePresignedNotebookInstanceUrl``.

    The login page sets the session cookies and redirects into Jupyter, which a notebook instance
    serves at the root of its own host (``https://NAME.notebook.REGION.sagemaker.aws/``).
    ``session_expiration_s`` (1800 to 43200; the shortest by default: a run needs no 12-hour session)
    bounds how long those cookies stay valid. Raises ``AuthRejected`` when the login is refused,
    ``RemoteError`` when it does not reach Jupyter (is the instance InService?), ``SageMakerCallFailed``
    when the API call fails.
    """
    client = client or sagemaker_client(region=region, endpoint_url=endpoint_url)
    answer = await call(
        client,
        "CreatePresignedNotebookInstanceUrl",
        NotebookInstanceName=name,
        SessionExpirationDurationInSeconds=session_expiration_s,
    )
    where = f"notebook instance {name}"
    _authorized, final_url, cookies, _page = await _presigned_login(
        answer, "CreatePresignedNotebookInstanceUrl", where=where, verify_tls=verify_tls, timeout_s=timeout_s
    )
    base_url = str(final_url.copy_with(path="/", query=None, fragment=None))
    return await _checked_connection(
        base_url,
        cookies,
        where=where,
        unreached="its Jupyter server (HTTP 404); is it InService?",
        verify_tls=verify_tls,
        timeout_s=timeout_s,
    )
