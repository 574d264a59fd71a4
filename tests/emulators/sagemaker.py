"""A local emulator of the slice of the SageMaker API that lamplighter uses, for real boto3 clients.

moto implements none of the Studio app, space, user-profile or presigned-URL calls (research/feasibility.md
§4), so the tests talk to this instead. It speaks the AWS JSON 1.1 protocol (``POST /`` with
``X-Amz-Target: SageMaker.<Operation>``, JSON bodies, epoch-second timestamps, errors as HTTP 400 with
``{"__type": ..., "message": ...}``) on a free 127.0.0.1 port, from a ``ThreadingHTTPServer`` in a thread.
Point boto3 at it with ``endpoint_url`` and dummy credentials.

Emulated operations: CreateDomain, DescribeDomain, UpdateDomain, ListDomains; CreateUserProfile,
DescribeUserProfile, UpdateUserProfile; CreateSpace, DescribeSpace; CreateApp, DescribeApp, ListApps
(paginated with NextToken; no status/type filter, like the real API), DeleteApp;
CreateStudioLifecycleConfig, DescribeStudioLifecycleConfig; CreatePresignedDomainUrl; for the fleet check
ListUserProfiles, ListSpaces and ListNotebookInstances (instances added with
:meth:`SageMakerEmulator.add_notebook_instance`). For the Lambda's
script it also serves S3 GetObject and PutObject (path style; objects also put with
:meth:`SageMakerEmulator.put_object`).
Notebook instances (Create/Describe/Start/Stop/UpdateNotebookInstance, their lifecycle configurations,
CreatePresignedNotebookInstanceUrl) are in :mod:`tests.emulators.notebook_instances`.

Apps move Pending → InService → Deleting → Deleted on time-based transitions (``pending_s``,
``deleting_s``). A JupyterLab or JupyterServer app runs a real ``jupyter server`` under the app type's base
URL (``/jupyterlab/default/``, ``/jupyter/default/``) with its root in the owner's persistent home, and
``ContentsManager.allow_hidden`` on, as SageMaker Distribution configures it
(aws/sagemaker-distribution ``template/v2/dirs/etc/jupyter/jupyter_server_config.py``). An app is
InService only once its server answers; DeleteApp kills the server, and the app reads Deleted only once
the process is gone.

Its Jupyter servers run the way SageMaker Distribution starts them, with no token
(``--ServerApp.token=''``), reachable only through Studio's front door (:mod:`tests.emulators.studio_proxy`,
``studio_url``), which lets a request into an app's base path only with the ``studio-session`` cookie
of a login made for that app.

The presigned login mirrors Studio's: ``AuthorizedUrl`` is ``{studio_url}/auth?token=<one-time>``; the
``/auth`` page checks and burns the one-time token and sets the session cookie. Then, by ``login_flow``:
``"redirect"`` answers 302 to ``{base}lab`` (a login for an app that is not InService is sent to a
studio home page instead); ``"host-cookie"`` answers 200 with a page whose script sends the browser to
the studio home, so a client must take the URL's host plus the app's base path itself, with the
cookies, and may poll ``/app?appType=…&appName=…`` (plain-text status) until the app is InService, as
the AWS samples do.

The rules are SageMaker's (botocore ``sagemaker`` model, the Studio developer guide): JupyterLab and
CodeEditor apps run in spaces, JupyterServer and KernelGateway (Studio Classic) for user profiles; a
space runs one app at a time; ListApps sorts ascending unless told otherwise; CreatePresignedDomainUrl
into a private space (``SpaceSharingSettings.SharingType: Private``) is refused for anyone but its owner,
and into any space for a user profile that is not in the domain.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lamplighter.localserver import LocalServer, start_local_server
from tests.emulators import shapes as _shapes
from tests.emulators.notebook_instances import NotebookInstanceOps
from tests.emulators.studio_proxy import Local, StudioProxy, ToApp
from tests.waiting import wait_until

__all__ = ["LOGIN_FLOWS", "EmulatedApp", "SageMakerEmulator", "StudioDomain", "aws_env"]

_JUPYTER_BASES = {"JupyterLab": "/jupyterlab/default/", "JupyterServer": "/jupyter/default/"}
_APP_TYPES = (
    "JupyterServer",
    "KernelGateway",
    "DetailedProfiler",
    "TensorBoard",
    "CodeEditor",
    "JupyterLab",
    "RStudioServerPro",
    "RSessionGateway",
    "Canvas",
)
_LCC_APP_TYPES = ("JupyterServer", "KernelGateway", "CodeEditor", "JupyterLab")
# Where each app type may run: a space, or a user profile (Studio Classic).
_SPACE_APP_TYPES = ("JupyterLab", "CodeEditor")
_PROFILE_APP_TYPES = ("JupyterServer", "KernelGateway", "DetailedProfiler", "TensorBoard")
LOGIN_FLOWS = ("redirect", "host-cookie")
# DefaultSpaceSettings' members in botocore's sagemaker model (no CodeEditorAppSettings).
_DEFAULT_SPACE_KEYS = {
    "ExecutionRole",
    "SecurityGroups",
    "JupyterServerAppSettings",
    "KernelGatewayAppSettings",
    "JupyterLabAppSettings",
    "SpaceStorageSettings",
    "CustomPosixUserConfig",
    "CustomFileSystemConfigs",
}
_SETTINGS_FOR_LCC_TYPE = {
    "JupyterLabAppSettings": "JupyterLab",
    "CodeEditorAppSettings": "CodeEditor",
    "JupyterServerAppSettings": "JupyterServer",
    "KernelGatewayAppSettings": "KernelGateway",
}
_LCC_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def aws_env(endpoint_url: str, region: str = "us-east-1") -> dict[str, str]:
    """Environment for boto3 that reaches the emulator with dummy credentials and no real AWS config."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "LAMPLIGHTER_SAGEMAKER_ENDPOINT_URL": endpoint_url,
    }


@dataclass(frozen=True)
class StudioDomain:
    """Names in a test domain: a user, the user's private space and an unowned shared space."""

    id: str
    user: str = "alice"
    space: str = "alice-space"
    shared_space: str = "team"


class _ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class _Login:
    domain_id: str
    user_profile: str
    space: str | None
    app_type: str
    expires_at: float
    used: bool = False


@dataclass
class EmulatedApp:
    """One app the emulator runs; ``server`` is its real Jupyter server (JupyterLab/JupyterServer only)."""

    domain_id: str
    app_type: str
    app_name: str
    space_name: str | None
    user_profile_name: str | None
    arn: str
    home_workdir: Path
    metadata_path: Path
    created_at: float
    pending_s: float
    deleting_s: float
    fail_reason: str | None = None
    server: LocalServer | None = None
    instance_type: str = "ml.t3.medium"  # ResourceSpec.InstanceType (KernelGateway: the billed instance)
    image_arn: str | None = None  # ResourceSpec.SageMakerImageArn
    delete_requested_at: float | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def owner(self) -> str:
        return self.space_name or self.user_profile_name or ""

    @property
    def base_path(self) -> str | None:
        return _JUPYTER_BASES.get(self.app_type)

    @property
    def home(self) -> Path:
        """The owner's home folder, which is the Jupyter server's root (persists across app restarts)."""
        return self.home_workdir / "root"

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.delete_requested_at is not None:
            if now >= self.delete_requested_at + self.deleting_s and self.gone.is_set():
                return "Deleted"
            return "Deleting"
        if now < self.created_at + self.pending_s:
            return "Pending"
        if self.fail_reason is not None:
            return "Failed"
        return "InService" if self.ready.is_set() else "Pending"

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "DomainId": self.domain_id,
            "AppType": self.app_type,
            "AppName": self.app_name,
            "Status": self.status(),
            "CreationTime": self.created_at,
            "ResourceSpec": {
                "InstanceType": self.instance_type,
                **({"SageMakerImageArn": self.image_arn} if self.image_arn else {}),
            },
        }
        if self.space_name:
            out["SpaceName"] = self.space_name
        if self.user_profile_name:
            out["UserProfileName"] = self.user_profile_name
        return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: SageMakerEmulator


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        service, _, operation = target.partition(".")
        if service != "SageMaker" or not operation:
            status, payload = (
                400,
                {"__type": "UnknownOperationException", "message": f"bad target {target!r}"},
            )
        else:
            status, payload = self.server.emulator._dispatch(operation, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-RequestId", secrets.token_hex(8))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        # S3 PutObject, path style: what boto3's upload_file sends for a small file.
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        bucket, _, key = unquote(urlsplit(self.path).path.lstrip("/")).partition("/")
        self.server.emulator._objects[(bucket, key)] = body
        self.send_response(200)
        self.send_header("ETag", '"0"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        # S3 GetObject, path style (botocore uses path style for an IP endpoint).
        bucket, _, key = unquote(urlsplit(self.path).path.lstrip("/")).partition("/")
        body = self.server.emulator._objects.get((bucket, key))
        if body is None:
            error = (
                b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"
            )
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class SageMakerEmulator(NotebookInstanceOps):
    """The emulated service: ``with SageMakerEmulator(tmp_path) as sm:``, then boto3 at ``sm.endpoint_url``.

    ``pending_s`` and ``deleting_s`` are the minimum times an app spends Pending and Deleting;
    ``list_page_size`` is ListApps' default MaxResults (10, as in the real API).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        pending_s: float = 0.1,
        deleting_s: float = 0.1,
        list_page_size: int = 10,
        login_flow: str = "redirect",
        classic: bool = False,
    ) -> None:
        if login_flow not in LOGIN_FLOWS:
            raise ValueError(f"login_flow: one of {LOGIN_FLOWS}")
        self.login_flow = login_flow
        # JupyterServer apps run Studio Classic's extension (tests.emulators.studio_classic), with
        # classic_config's lines added to their jupyter_server_config.py.
        self.classic = classic
        self.classic_config = ""
        self.workdir = workdir
        self.region = region
        self.account_id = account_id
        self.pending_s = pending_s
        self.deleting_s = deleting_s
        self.list_page_size = list_page_size
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.RLock()
        self._domains: dict[str, dict[str, Any]] = {}
        self._profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self._spaces: dict[tuple[str, str], dict[str, Any]] = {}
        self._apps: list[EmulatedApp] = []
        self._lccs: dict[str, dict[str, Any]] = {}
        self._logins: dict[str, _Login] = {}
        self._sessions: dict[str, _Login] = {}  # studio-session cookie → the login it came from
        self._proxy: StudioProxy | None = None
        self._faults: list[tuple[str, _ApiError]] = []
        self._fail_next: str | None = None
        self._objects: dict[tuple[str, str], bytes] = {}
        self._threads: list[threading.Thread] = []
        self._http = _Server(("127.0.0.1", 0), _Handler)
        self._http.emulator = self
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="sagemaker-emulator",
            daemon=True,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def studio_url(self) -> str:
        """Studio's front door: the login pages and the apps, behind the session cookie."""
        assert self._proxy is not None, "start the emulator first"
        return self._proxy.url

    def start(self) -> SageMakerEmulator:
        self._thread.start()
        self._proxy = StudioProxy(self)
        return self

    def close(self) -> None:
        """Stop the API and every app's Jupyter server."""
        self._http.shutdown()
        self._http.server_close()
        if self._proxy is not None:
            self._proxy.close()
        for thread in list(self._threads):
            thread.join(30)
        for app in self._apps:
            if app.server is not None:
                app.server.stop()
        self._close_notebook_instances()

    def __enter__(self) -> SageMakerEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client(self) -> Any:
        """A boto3 SageMaker client bound to the emulator (credentials must come from :func:`aws_env`)."""
        import boto3
        import botocore.session

        core = botocore.session.Session()
        core.register_component("data_loader", _loader())
        return boto3.session.Session(botocore_session=core).client(
            "sagemaker", region_name=self.region, endpoint_url=self.endpoint_url
        )

    # -- test controls ------------------------------------------------------------------------

    def inject_error(
        self, operation: str, code: str, message: str = "", *, times: int = 1, status: int = 400
    ) -> None:
        """Make the next ``times`` calls of ``operation`` fail with this error (``ThrottlingException``)."""
        with self._lock:
            for _ in range(times):
                self._faults.append((operation, _ApiError(code, message or f"{code} (injected)", status)))

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """Store an S3 object, served to ``GetObject`` (set ``AWS_ENDPOINT_URL_S3`` to the endpoint)."""
        self._objects[(bucket, key)] = body

    def fail_next_app(self, reason: str) -> None:
        """The next CreateApp gives an app that goes Pending → Failed with this FailureReason."""
        with self._lock:
            self._fail_next = reason

    def add_domain(
        self,
        name: str = "lamplighter-test",
        *,
        default_user_settings: dict[str, Any] | None = None,
        default_space_settings: dict[str, Any] | None = None,
    ) -> str:
        """Create a domain directly (as an admin's CreateDomain would); returns its id."""
        _, payload = self._dispatch(
            "CreateDomain",
            json.dumps(
                {
                    "DomainName": name,
                    "AuthMode": "IAM",
                    # As a console-made domain: KernelGateway apps default to ml.t3.medium.
                    "DefaultUserSettings": default_user_settings
                    or {
                        "ExecutionRole": self._role(),
                        "KernelGatewayAppSettings": {"DefaultResourceSpec": {"InstanceType": "ml.t3.medium"}},
                    },
                    "DefaultSpaceSettings": default_space_settings or {"ExecutionRole": self._role()},
                    "SubnetIds": ["subnet-0"],
                    "VpcId": "vpc-0",
                }
            ).encode(),
        )
        return str(payload["DomainId"])

    def add_user_profile(self, domain_id: str, name: str) -> None:
        status, payload = self._dispatch(
            "CreateUserProfile", json.dumps({"DomainId": domain_id, "UserProfileName": name}).encode()
        )
        assert status == 200, payload

    def add_space(self, domain_id: str, name: str, *, owner: str | None = None) -> None:
        body: dict[str, Any] = {"DomainId": domain_id, "SpaceName": name}
        if owner:
            body["OwnershipSettings"] = {"OwnerUserProfileName": owner}
            body["SpaceSharingSettings"] = {"SharingType": "Private"}
        status, payload = self._dispatch("CreateSpace", json.dumps(body).encode())
        assert status == 200, payload

    def app(
        self,
        domain_id: str,
        app_type: str,
        *,
        space: str | None = None,
        user_profile: str | None = None,
        app_name: str = "default",
    ) -> EmulatedApp:
        """The newest app with this key (raises ``KeyError`` if there is none)."""
        with self._lock:
            for app in reversed(self._apps):
                if (app.domain_id, app.app_type, app.app_name, app.space_name, app.user_profile_name) == (
                    domain_id,
                    app_type,
                    app_name,
                    space,
                    None if space else user_profile,
                ):
                    return app
        raise KeyError((domain_id, app_type, space or user_profile, app_name))

    def home(self, domain_id: str, owner: str) -> Path:
        """The persistent home of a space or user profile (the Jupyter root of its apps)."""
        return self.workdir / "homes" / domain_id / owner / "root"

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Poll ``predicate`` until true, through the suite's one wait helper."""
        wait_until(predicate, timeout_s=timeout_s, what="the emulated SageMaker state")

    def operations(self) -> list[str]:
        """The operation names called so far, in order."""
        with self._lock:
            return [name for name, _ in self.calls]

    # -- the protocol -------------------------------------------------------------------------

    def _dispatch(self, operation: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            params = json.loads(body or b"{}")
            if not isinstance(params, dict):
                raise _ApiError("SerializationException", "body must be a JSON object")
            with self._lock:
                self.calls.append((operation, params))
                for index, (name, error) in enumerate(self._faults):
                    if name == operation:
                        del self._faults[index]
                        raise error
                handler = getattr(self, f"_op_{operation}", None)
                if handler is None:
                    raise _ApiError("UnknownOperationException", f"{operation} is not emulated")
                if operation in _shapes.STRICT_OPERATIONS:
                    problem = _shapes.check_request(operation, params)
                    if problem:
                        raise _ApiError("ValidationException", f"1 validation error detected: {problem}")
                answer = handler(params)
                if operation in _shapes.STRICT_OPERATIONS:
                    off_model = _shapes.check_answer(operation, answer)
                    assert off_model is None, off_model  # an emulator bug, not the caller's
                return 200, answer
        except _ApiError as exc:
            return exc.status, {"__type": exc.code, "message": exc.message}
        except json.JSONDecodeError:
            return 400, {"__type": "SerializationException", "message": "body is not JSON"}

    def _arn(self, kind: str, path: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{kind}/{path}"

    def _role(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/StudioExecutionRole"

    def _domain(self, params: dict[str, Any]) -> dict[str, Any]:
        domain_id = _required(params, "DomainId")
        domain = self._domains.get(domain_id)
        if domain is None:
            raise _ApiError("ResourceNotFound", f"Domain {domain_id} does not exist")
        return domain

    def _check_lcc_settings(self, settings: dict[str, Any]) -> None:
        for key, app_type in _SETTINGS_FOR_LCC_TYPE.items():
            app_settings = settings.get(key)
            if not isinstance(app_settings, dict):
                continue
            arns = list(app_settings.get("LifecycleConfigArns") or [])
            default = (app_settings.get("DefaultResourceSpec") or {}).get("LifecycleConfigArn")
            for arn in [*arns, *([default] if default else [])]:
                lcc = next((c for c in self._lccs.values() if c["StudioLifecycleConfigArn"] == arn), None)
                if lcc is None:
                    raise _ApiError("ResourceNotFound", f"Lifecycle config {arn} does not exist")
                if lcc["StudioLifecycleConfigAppType"] != app_type:
                    raise _ApiError(
                        "ValidationException", f"Lifecycle config {arn} is not for {app_type} apps"
                    )
            if default and default not in arns:
                raise _ApiError(
                    "ValidationException",
                    f"{key}: the default lifecycle config must be in LifecycleConfigArns",
                )

    # Domains, user profiles, spaces.

    def _op_CreateDomain(self, params: dict[str, Any]) -> dict[str, Any]:
        domain_id = "d-" + secrets.token_hex(6)
        arn = self._arn("domain", domain_id)
        self._domains[domain_id] = {
            "DomainId": domain_id,
            "DomainArn": arn,
            "DomainName": _required(params, "DomainName"),
            "Status": "InService",
            "AuthMode": params.get("AuthMode", "IAM"),
            "DefaultUserSettings": params.get("DefaultUserSettings") or {},
            "DefaultSpaceSettings": params.get("DefaultSpaceSettings") or {},
            "CreationTime": time.time(),
            "LastModifiedTime": time.time(),
            "Url": f"https://{domain_id}.studio.{self.region}.sagemaker.aws",
        }
        return {"DomainArn": arn, "DomainId": domain_id, "Url": self._domains[domain_id]["Url"]}

    def _op_DescribeDomain(self, params: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(self._domain(params)))  # type: ignore[no-any-return]

    def _op_ListDomains(self, params: dict[str, Any]) -> dict[str, Any]:
        keys = ("DomainArn", "DomainId", "DomainName", "Status", "CreationTime", "LastModifiedTime", "Url")
        return {"Domains": [{k: d[k] for k in keys} for d in self._domains.values()]}

    def _op_UpdateDomain(self, params: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(params)
        update = params.get("DefaultUserSettings") or {}
        self._check_lcc_settings(update)
        space_update = params.get("DefaultSpaceSettings") or {}
        unknown = set(space_update) - _DEFAULT_SPACE_KEYS
        if unknown:
            raise _ApiError(
                "ValidationException", f"DefaultSpaceSettings has no {', '.join(sorted(unknown))}"
            )
        self._check_lcc_settings(space_update)
        # Each settings structure given replaces the stored one as a whole.
        domain["DefaultUserSettings"].update(update)
        domain["DefaultSpaceSettings"].update(space_update)
        domain["LastModifiedTime"] = time.time()
        return {"DomainArn": domain["DomainArn"]}

    def _op_CreateUserProfile(self, params: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(params)
        name = _required(params, "UserProfileName")
        if (domain["DomainId"], name) in self._profiles:
            raise _ApiError("ResourceInUse", f"User profile {name} already exists")
        arn = self._arn("user-profile", f"{domain['DomainId']}/{name}")
        self._profiles[(domain["DomainId"], name)] = {
            "DomainId": domain["DomainId"],
            "UserProfileArn": arn,
            "UserProfileName": name,
            "Status": "InService",
            "UserSettings": params.get("UserSettings") or {},
            "CreationTime": time.time(),
            "LastModifiedTime": time.time(),
        }
        return {"UserProfileArn": arn}

    def _profile(self, params: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(params)
        name = _required(params, "UserProfileName")
        profile = self._profiles.get((domain["DomainId"], name))
        if profile is None:
            raise _ApiError("ResourceNotFound", f"User profile {name} does not exist")
        return profile

    def _op_DescribeUserProfile(self, params: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(self._profile(params)))  # type: ignore[no-any-return]

    def _op_UpdateUserProfile(self, params: dict[str, Any]) -> dict[str, Any]:
        profile = self._profile(params)
        update = params.get("UserSettings") or {}
        self._check_lcc_settings(update)
        profile["UserSettings"].update(update)
        profile["LastModifiedTime"] = time.time()
        return {"UserProfileArn": profile["UserProfileArn"]}

    def _op_CreateSpace(self, params: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(params)
        name = _required(params, "SpaceName")
        if (domain["DomainId"], name) in self._spaces:
            raise _ApiError("ResourceInUse", f"Space {name} already exists")
        owner = (params.get("OwnershipSettings") or {}).get("OwnerUserProfileName")
        if owner and (domain["DomainId"], owner) not in self._profiles:
            raise _ApiError("ResourceNotFound", f"User profile {owner} does not exist")
        arn = self._arn("space", f"{domain['DomainId']}/{name}")
        space: dict[str, Any] = {
            "DomainId": domain["DomainId"],
            "SpaceArn": arn,
            "SpaceName": name,
            "Status": "InService",
            "CreationTime": time.time(),
            "LastModifiedTime": time.time(),
            "SpaceSharingSettings": params.get("SpaceSharingSettings") or {"SharingType": "Shared"},
            "Url": f"https://{secrets.token_hex(8)}.studio.{self.region}.sagemaker.aws",
        }
        if owner:
            space["OwnershipSettings"] = {"OwnerUserProfileName": owner}
        if isinstance(params.get("SpaceSettings"), dict):
            space["SpaceSettings"] = params["SpaceSettings"]
        self._spaces[(domain["DomainId"], name)] = space
        return {"SpaceArn": arn}

    def _op_DescribeSpace(self, params: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(params)
        name = _required(params, "SpaceName")
        space = self._spaces.get((domain["DomainId"], name))
        if space is None:
            raise _ApiError("ResourceNotFound", f"Space {name} does not exist")
        return json.loads(json.dumps(space))  # type: ignore[no-any-return]

    # Apps.

    def _owner(self, params: dict[str, Any], domain_id: str) -> tuple[str | None, str | None]:
        space, user = params.get("SpaceName") or None, params.get("UserProfileName") or None
        if bool(space) == bool(user):
            raise _ApiError("ValidationException", "Specify exactly one of SpaceName and UserProfileName")
        if space and (domain_id, space) not in self._spaces:
            raise _ApiError("ResourceNotFound", f"Space {space} does not exist")
        if user and (domain_id, user) not in self._profiles:
            raise _ApiError("ResourceNotFound", f"User profile {user} does not exist")
        return space, user

    def _find_app(self, params: dict[str, Any]) -> EmulatedApp:
        domain = self._domain(params)
        space, user = self._owner(params, domain["DomainId"])
        app_type, name = _required(params, "AppType"), _required(params, "AppName")
        for app in reversed(self._apps):
            if (app.domain_id, app.app_type, app.app_name, app.space_name, app.user_profile_name) == (
                domain["DomainId"],
                app_type,
                name,
                space,
                user,
            ):
                return app
        raise _ApiError("ResourceNotFound", f"App {name} of type {app_type} does not exist")

    def _op_CreateApp(self, params: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(params)
        space, user = self._owner(params, domain["DomainId"])
        app_type, name = _required(params, "AppType"), _required(params, "AppName")
        if app_type not in _APP_TYPES:
            raise _ApiError("ValidationException", f"AppType {app_type!r} is not valid")
        if space and app_type not in _SPACE_APP_TYPES:
            raise _ApiError("ValidationException", f"{app_type} apps cannot be created in a space")
        if user and app_type not in _PROFILE_APP_TYPES:
            raise _ApiError(
                "ValidationException", f"{app_type} apps cannot be created for a user profile; use a space"
            )
        try:
            existing = self._find_app(params)
        except _ApiError:
            existing = None
        if existing is not None and existing.status() != "Deleted":
            raise _ApiError("ResourceInUse", f"App {name} of type {app_type} already exists")
        if space:
            running = [
                a
                for a in self._apps
                if (a.domain_id, a.space_name) == (domain["DomainId"], space) and a.status() != "Deleted"
            ]
            if running:
                raise _ApiError(
                    "ResourceInUse",
                    f"Space {space} already has an app ({running[0].app_type}); a space runs one app at a time",
                )
        spec = self._resource_spec(params, domain, user, app_type)  # refused before anything is made
        owner = space or user or ""
        arn = self._arn("app", f"{domain['DomainId']}/{owner}/{app_type.lower()}/{name}")
        app_dir = self.workdir / "apps" / f"{domain['DomainId']}-{owner}-{app_type}-{name}-{len(self._apps)}"
        app_dir.mkdir(parents=True)
        metadata = {
            "AppType": app_type,
            "DomainId": domain["DomainId"],
            "SpaceName": space or "",
            "UserProfileName": user or "",
            "ResourceArn": arn,
            "ResourceName": name,
            "AppImageVersion": "",
        }
        (app_dir / "resource-metadata.json").write_text(json.dumps(metadata))
        app = EmulatedApp(
            domain_id=domain["DomainId"],
            app_type=app_type,
            app_name=name,
            space_name=space,
            user_profile_name=user,
            arn=arn,
            home_workdir=self.workdir / "homes" / domain["DomainId"] / owner,
            metadata_path=app_dir / "resource-metadata.json",
            created_at=time.time(),
            pending_s=self.pending_s,
            deleting_s=self.deleting_s,
            fail_reason=self._fail_next,
        )
        app.instance_type, app.image_arn = spec
        self._fail_next = None
        self._apps.append(app)
        if app.fail_reason is None and app.base_path is not None:
            self._spawn(self._start_server, app)
        elif app.fail_reason is None:
            app.ready.set()
        return {"AppArn": arn}

    def _resource_spec(
        self, params: dict[str, Any], domain: dict[str, Any], user: str | None, app_type: str
    ) -> tuple[str, str | None]:
        """CreateApp's ResourceSpec, else the user's or domain's default for the app type (botocore's
        documentation: a KernelGateway app with no instance type anywhere is refused)."""
        spec = dict(params.get("ResourceSpec") or {})
        key = f"{app_type}AppSettings"
        profile = self._profiles.get((domain["DomainId"], user or "")) or {}
        for settings in ((profile.get("UserSettings") or {}), domain["DefaultUserSettings"]):
            default = (settings.get(key) or {}).get("DefaultResourceSpec") or {}
            for name, value in default.items():
                spec.setdefault(name, value)
        instance = spec.get("InstanceType")
        if app_type == "KernelGateway" and not instance:
            raise _ApiError("ValidationException", "KernelGateway apps need ResourceSpec.InstanceType")
        if instance in (None, "system"):
            # JupyterServer apps run on the free 'system' instance; the rest default to ml.t3.medium.
            instance = "system" if app_type == "JupyterServer" else "ml.t3.medium"
        return str(instance), spec.get("SageMakerImageArn")

    def _spawn(self, target: Callable[[EmulatedApp], None], app: EmulatedApp) -> None:
        thread = threading.Thread(target=target, args=(app,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _start_server(self, app: EmulatedApp) -> None:
        assert app.base_path is not None
        if self.classic and app.app_type == "JupyterServer":
            from tests.emulators.studio_classic import server_config

            config = app.home_workdir / "config"
            config.mkdir(parents=True, exist_ok=True)
            (config / "jupyter_server_config.py").write_text(
                server_config(
                    metadata_path=app.metadata_path,
                    endpoint_url=self.endpoint_url,
                    region=self.region,
                    repo_root=Path(__file__).resolve().parents[2],
                    extra=self.classic_config,
                )
            )
        try:
            server = start_local_server(
                app.home_workdir,
                base_url=app.base_path,
                token="",  # SageMaker Distribution: no token; Studio's proxy and its cookie guard the app
                extra_args=["--ContentsManager.allow_hidden=True"],
            )
        except Exception as exc:  # the app fails the way a broken image does
            app.fail_reason = f"the Jupyter server did not start: {type(exc).__name__}"
            app.gone.set()
            return
        with app.lock:
            app.server = server
            deleting = app.delete_requested_at is not None
        if deleting:
            server.stop()
            app.gone.set()
        else:
            app.ready.set()

    def _stop_server(self, app: EmulatedApp) -> None:
        with app.lock:
            server = app.server
        if server is not None:
            server.stop()
            app.gone.set()
        elif app.ready.is_set() or app.fail_reason is not None or app.base_path is None:
            app.gone.set()
        # Otherwise the server is still starting: _start_server stops it and sets ``gone``.

    def _op_DescribeApp(self, params: dict[str, Any]) -> dict[str, Any]:
        app = self._find_app(params)
        out = app.details()
        out["AppArn"] = app.arn
        status = out["Status"]
        if status == "Failed":
            out["FailureReason"] = app.fail_reason
        if status == "InService":
            out["LastHealthCheckTimestamp"] = time.time()
        return out

    def _op_ListApps(self, params: dict[str, Any]) -> dict[str, Any]:
        apps = [
            app
            for app in self._apps
            if params.get("DomainIdEquals") in (None, app.domain_id)
            and params.get("UserProfileNameEquals") in (None, app.user_profile_name)
            and params.get("SpaceNameEquals") in (None, app.space_name)
        ]
        order = params.get("SortOrder", "Ascending")
        if order not in ("Ascending", "Descending") or params.get("SortBy", "CreationTime") != "CreationTime":
            raise _ApiError("ValidationException", "SortOrder/SortBy: Ascending|Descending by CreationTime")
        apps.sort(key=lambda a: a.created_at, reverse=order == "Descending")
        size = int(params.get("MaxResults") or self.list_page_size)
        if not 1 <= size <= 100:
            raise _ApiError("ValidationException", "MaxResults must be between 1 and 100")
        start = 0
        if params.get("NextToken"):
            try:
                start = int(json.loads(base64.b64decode(params["NextToken"]))["offset"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise _ApiError("ValidationException", "Invalid pagination token") from None
        page = apps[start : start + size]
        out: dict[str, Any] = {"Apps": [app.details() for app in page]}
        if start + size < len(apps):
            out["NextToken"] = base64.b64encode(json.dumps({"offset": start + size}).encode()).decode()
        return out

    def _op_DeleteApp(self, params: dict[str, Any]) -> dict[str, Any]:
        app = self._find_app(params)
        status = app.status()
        if status == "Deleted":
            raise _ApiError("ResourceNotFound", f"App {app.app_name} of type {app.app_type} does not exist")
        if status == "Deleting":
            raise _ApiError("ResourceInUse", f"App {app.app_name} of type {app.app_type} is being deleted")
        with app.lock:
            app.delete_requested_at = time.time()
        self._spawn(self._stop_server, app)
        return {}

    # Lifecycle configurations.

    def _op_CreateStudioLifecycleConfig(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _required(params, "StudioLifecycleConfigName")
        content = _required(params, "StudioLifecycleConfigContent")
        app_type = _required(params, "StudioLifecycleConfigAppType")
        if not _LCC_NAME.match(name):
            raise _ApiError("ValidationException", f"Invalid lifecycle config name {name!r}")
        if app_type not in _LCC_APP_TYPES:
            raise _ApiError("ValidationException", f"Invalid StudioLifecycleConfigAppType {app_type!r}")
        if len(content) > 16384:
            raise _ApiError("ValidationException", "StudioLifecycleConfigContent is longer than 16384")
        try:
            base64.b64decode(content, validate=True)
        except binascii.Error:
            raise _ApiError("ValidationException", "StudioLifecycleConfigContent is not base64") from None
        if name in self._lccs:
            raise _ApiError("ResourceInUse", f"Lifecycle config {name} already exists")
        arn = self._arn("studio-lifecycle-config", name)
        self._lccs[name] = {
            "StudioLifecycleConfigArn": arn,
            "StudioLifecycleConfigName": name,
            "CreationTime": time.time(),
            "LastModifiedTime": time.time(),
            "StudioLifecycleConfigContent": content,
            "StudioLifecycleConfigAppType": app_type,
        }
        return {"StudioLifecycleConfigArn": arn}

    def _op_DescribeStudioLifecycleConfig(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _required(params, "StudioLifecycleConfigName")
        if name not in self._lccs:
            raise _ApiError("ResourceNotFound", f"Lifecycle config {name} does not exist")
        return dict(self._lccs[name])

    # Presigned login.

    def _op_CreatePresignedDomainUrl(self, params: dict[str, Any]) -> dict[str, Any]:
        profile = self._profile(params)
        space_name = params.get("SpaceName") or None
        if space_name:
            space = self._spaces.get((profile["DomainId"], space_name))
            if space is None:
                raise _ApiError("ResourceNotFound", f"Space {space_name} does not exist")
            owner = (space.get("OwnershipSettings") or {}).get("OwnerUserProfileName")
            private = (space.get("SpaceSharingSettings") or {}).get("SharingType") == "Private"
            if private and owner != profile["UserProfileName"]:
                raise _ApiError(
                    "ValidationException",
                    f"User profile {profile['UserProfileName']} cannot access private space {space_name}",
                )
        expires = int(params.get("ExpiresInSeconds") or 300)
        if not 5 <= expires <= 300:
            raise _ApiError("ValidationException", "ExpiresInSeconds must be between 5 and 300")
        if not 1800 <= int(params.get("SessionExpirationDurationInSeconds") or 43200) <= 43200:
            raise _ApiError("ValidationException", "SessionExpirationDurationInSeconds must be 1800 to 43200")
        landing = str(params.get("LandingUri") or "")
        app_type = "JupyterLab" if space_name else "JupyterServer"
        if landing.startswith("app:"):
            app_type = landing.split(":")[1]
        token = secrets.token_urlsafe(24)
        self._logins[token] = _Login(
            profile["DomainId"], profile["UserProfileName"], space_name, app_type, time.time() + expires
        )
        return {"AuthorizedUrl": f"{self.studio_url}/auth?token={token}"}

    # Studio's front door (tests.emulators.studio_proxy calls this for every new connection).

    def front(self, method: str, target: str, cookies: dict[str, str]) -> Local | ToApp:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        if parts.path == "/auth" and method == "GET":
            return self._auth((query.get("token") or [""])[0])
        if parts.path == "/studio/home":
            return Local(
                200, "<html><body>SageMaker Studio (emulated): your app is not running.</body></html>"
            )
        with self._lock:
            login = self._sessions.get(cookies.get("studio-session", ""))
        if login is None:
            return Local(403, "<html><body>Not signed in to SageMaker Studio.</body></html>")
        if parts.path == "/app":
            app_type = (query.get("appType") or [""])[0]
            app = self._login_app(login, app_type, (query.get("appName") or ["default"])[0])
            return Local(200, app.status() if app is not None else "NotFound", content_type="text/plain")
        app = self._login_app(login, login.app_type)
        if app is None or app.base_path is None or not parts.path.startswith(app.base_path):
            return Local(404, "<html><body>No such app in this Studio session.</body></html>")
        server = app.server
        if app.status() != "InService" or server is None:
            return Local(404, f"<html><body>The app is {app.status()}.</body></html>")
        return ToApp(server.port)

    def _login_app(self, login: _Login, app_type: str, app_name: str = "default") -> EmulatedApp | None:
        try:
            return self.app(
                login.domain_id,
                app_type,
                space=login.space,
                user_profile=None if login.space else login.user_profile,
                app_name=app_name,
            )
        except KeyError:
            return None

    def _auth(self, token: str) -> Local:
        """The ``/auth`` page: burn the one-time token, set the session cookie, send the browser on."""
        with self._lock:
            login = self._logins.get(token)
            if login is None or login.used or time.time() > login.expires_at:
                return Local(403, "<html><body>Invalid or expired authentication token.</body></html>")
            login.used = True
            session = secrets.token_hex(16)
            self._sessions[session] = login
        cookie = ("Set-Cookie", f"studio-session={session}; Path=/; HttpOnly")
        if self.login_flow == "host-cookie":
            page = '<html><body><script>window.location.href = "/studio/home";</script></body></html>'
            return Local(200, page, headers=(cookie,))
        app = self._login_app(login, login.app_type)
        if app is None or app.status() != "InService" or app.base_path is None:
            return Local(302, "", headers=(cookie, ("Location", "/studio/home")))
        return Local(302, "", headers=(cookie, ("Location", app.base_path + "lab")))

    # -- the fleet check's listings: user profiles, spaces, notebook instances ------------------

    def _op_ListUserProfiles(self, params: dict[str, Any]) -> dict[str, Any]:
        keys = ("DomainId", "UserProfileName", "Status", "CreationTime", "LastModifiedTime")
        rows = [
            {k: p[k] for k in keys}
            for p in self._profiles.values()
            if params.get("DomainIdEquals") in (None, p["DomainId"])
            and str(params.get("UserProfileNameContains") or "") in p["UserProfileName"]
        ]
        return _fleet_page(rows, params, "UserProfiles", ("CreationTime", "LastModifiedTime"))

    def _op_ListSpaces(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for space in self._spaces.values():
            if params.get("DomainIdEquals") not in (None, space["DomainId"]):
                continue
            if str(params.get("SpaceNameContains") or "") not in space["SpaceName"]:
                continue
            row = {
                k: space[k] for k in ("DomainId", "SpaceName", "Status", "CreationTime", "LastModifiedTime")
            }
            app_type = (space.get("SpaceSettings") or {}).get("AppType")
            row["SpaceSettingsSummary"] = {"AppType": app_type} if app_type else {}
            row["SpaceSharingSettingsSummary"] = {"SharingType": space["SpaceSharingSettings"]["SharingType"]}
            if space.get("OwnershipSettings"):
                row["OwnershipSettingsSummary"] = dict(space["OwnershipSettings"])
            rows.append(row)
        return _fleet_page(rows, params, "Spaces", ("CreationTime", "LastModifiedTime"))

    def _op_ListNotebookInstances(self, params: dict[str, Any]) -> dict[str, Any]:
        statuses = ("Pending", "InService", "Stopping", "Stopped", "Failed", "Deleting", "Updating")
        if params.get("StatusEquals") not in (None, *statuses):
            raise _ApiError("ValidationException", f"StatusEquals {params['StatusEquals']!r} is not valid")
        summary_keys = (
            "NotebookInstanceName", "NotebookInstanceArn", "NotebookInstanceStatus", "Url", "InstanceType",
            "CreationTime", "LastModifiedTime", "NotebookInstanceLifecycleConfigName",
        )  # fmt: skip
        with self._lock:  # the notebook-instance slice's one store (tests/emulators/notebook_instances.py)
            listed = [i.details(self.region) for i in self._nbi.instances.values()]
        rows = [
            {k: item[k] for k in summary_keys if k in item}
            for item in listed
            if params.get("StatusEquals") in (None, item["NotebookInstanceStatus"])
            and str(params.get("NameContains") or "") in item["NotebookInstanceName"]
            and str(params.get("NotebookInstanceLifecycleConfigNameContains") or "")
            in item.get("NotebookInstanceLifecycleConfigName", "")
        ]
        by = {
            "Name": "NotebookInstanceName",
            "CreationTime": "CreationTime",
            "Status": "NotebookInstanceStatus",
        }
        if params.get("SortBy") not in (None, *by):
            raise _ApiError("ValidationException", "SortBy: Name|CreationTime|Status")
        renamed = dict(params, SortBy=by[params.get("SortBy") or "Name"])
        return _fleet_page(rows, renamed, "NotebookInstances", tuple(by.values()))

    def iter_apps(self) -> Iterator[EmulatedApp]:
        with self._lock:
            yield from list(self._apps)


@functools.cache
def _loader() -> Any:
    from botocore.loaders import create_loader

    return create_loader()


def _fleet_page(
    rows: list[dict[str, Any]], params: dict[str, Any], key: str, sort_keys: tuple[str, ...]
) -> dict[str, Any]:
    """One page of a List* answer: sorted as asked (ascending by creation time unless told), NextToken."""
    by = params.get("SortBy") or sort_keys[0]
    order = params.get("SortOrder") or "Ascending"
    if by not in sort_keys or order not in ("Ascending", "Descending"):
        raise _ApiError("ValidationException", f"SortBy/SortOrder: one of {sort_keys}, Ascending|Descending")
    rows.sort(key=lambda r: (r.get(by) is None, r.get(by)), reverse=order == "Descending")
    size = int(params.get("MaxResults") or 10)
    if not 1 <= size <= 100:
        raise _ApiError("ValidationException", "MaxResults must be between 1 and 100")
    start = 0
    if params.get("NextToken"):
        try:
            start = int(json.loads(base64.b64decode(params["NextToken"]))["offset"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _ApiError("ValidationException", "Invalid pagination token") from None
    out: dict[str, Any] = {key: rows[start : start + size]}
    if start + size < len(rows):
        out["NextToken"] = base64.b64encode(json.dumps({"offset": start + size}).encode()).decode()
    return out


def _required(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise _ApiError("ValidationException", f"1 validation error detected: {name} must not be null")
    return value
