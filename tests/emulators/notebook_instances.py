"""The notebook-instance slice of the SageMaker emulator: instances, their lifecycle configurations, login.

Mixed into :class:`tests.emulators.sagemaker.SageMakerEmulator` (its ``_dispatch`` finds ``_op_<Name>``
here). Shapes, required parameters and limits follow botocore's ``sagemaker`` service model:
``NotebookInstanceName`` and ``NotebookInstanceLifecycleConfigName`` match
``^[a-zA-Z0-9](-*[a-zA-Z0-9])*$`` (at most 63); a lifecycle configuration holds at most one OnCreate and
one OnStart, each ``Content`` 1 to 16384 characters (base64 of the script); a presigned URL's
``SessionExpirationDurationInSeconds`` is 1800 to 43200.

States are SageMaker's: CreateNotebookInstance and StartNotebookInstance give Pending, then InService
once the instance's real ``jupyter server`` answers; StopNotebookInstance is accepted only InService and
gives Stopping, then Stopped once the server has exited (``deleting_s`` at least); UpdateNotebookInstance
is accepted only Stopped or Failed; any other state is refused with a ValidationException, and a
missing instance or configuration is a ValidationException ``RecordNotFound``, as the real API answers.
Every start sets ``LastModifiedTime``.

The instance's server runs with no token, as on a notebook instance, where it is reached only on the
instance itself (``https://localhost:8443``: here https on a free port with a self-signed certificate
when the emulator is given ``notebook_tls``) or through the presigned login: ``AuthorizedUrl`` is
``{notebook_front}/auth?authToken=<one-time>``, whose page burns the token, sets the
``notebook-session`` cookie and redirects to ``/tree``; the front door then passes requests with that
cookie to the instance's server (plain http behind it, since the front door reads each first request).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lamplighter.localserver import LocalServer, start_local_server
from tests.emulators.studio_proxy import Local, StudioProxy, ToApp

__all__ = ["EmulatedNotebookInstance", "NotebookInstanceOps"]

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_MAX_CONTENT = 16384


class _Error(Exception):
    """Raised to the emulator's dispatcher, which answers it like the service (``code``, ``message``)."""


@dataclass
class EmulatedNotebookInstance:
    name: str
    arn: str
    instance_type: str
    role_arn: str
    workdir: Path
    metadata_path: Path
    created_at: float
    last_modified: float
    lifecycle_config: str | None
    status: str = "Pending"
    server: LocalServer | None = None
    stop_requested_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def details(self, region: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "NotebookInstanceArn": self.arn,
            "NotebookInstanceName": self.name,
            "NotebookInstanceStatus": self.status,
            "Url": f"{self.name}.notebook.{region}.sagemaker.aws",
            "InstanceType": self.instance_type,
            "RoleArn": self.role_arn,
            "CreationTime": self.created_at,
            "LastModifiedTime": self.last_modified,
            "DirectInternetAccess": "Enabled",
            "VolumeSizeInGB": 5,
            "RootAccess": "Enabled",
            "PlatformIdentifier": "notebook-al2-v2",
        }
        if self.lifecycle_config:
            out["NotebookInstanceLifecycleConfigName"] = self.lifecycle_config
        return out


@dataclass
class _NotebookLogin:
    instance: str
    expires_at: float
    used: bool = False


class NotebookInstanceOps:
    """The notebook-instance operations; state lives in ``_nbi`` (made on first use)."""

    # Provided by SageMakerEmulator.
    workdir: Path
    region: str
    account_id: str
    pending_s: float
    deleting_s: float
    _lock: threading.RLock
    _threads: list[threading.Thread]

    notebook_tls: tuple[Path, Path] | None = None
    """Certificate and key the instances' servers serve https with (``None``: plain http)."""

    @property
    def _nbi(self) -> _State:
        state: _State | None = self.__dict__.get("_nbi_state")
        if state is None:
            state = self.__dict__["_nbi_state"] = _State()
        return state

    # -- test controls --------------------------------------------------------------------------

    def add_notebook_instance(
        self, name: str, *, lifecycle_config: str | None = None, running: bool = True
    ) -> EmulatedNotebookInstance:
        """Create an instance (as an admin's CreateNotebookInstance would); it goes Pending → InService,
        or with ``running=False`` is Stopped at once, with no server (what a listing sees of one)."""
        params: dict[str, Any] = {
            "NotebookInstanceName": name,
            "InstanceType": "ml.t3.medium",
            "RoleArn": f"arn:aws:iam::{self.account_id}:role/NotebookRole",
        }
        if lifecycle_config:
            params["LifecycleConfigName"] = lifecycle_config
        with self._lock:
            if lifecycle_config and not running and lifecycle_config not in self._nbi.lccs:
                content = {"Content": "IyEvYmluL2Jhc2gK"}  # "#!/bin/bash": a listing only reads the name
                self._op_CreateNotebookInstanceLifecycleConfig(
                    {"NotebookInstanceLifecycleConfigName": lifecycle_config, "OnStart": [content]}
                )
            self._op_CreateNotebookInstance(params, boot=running)
            return self._nbi.instances[name]

    def notebook_instance(self, name: str) -> EmulatedNotebookInstance:
        with self._lock:
            return self._nbi.instances[name]

    def notebook_lcc(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._nbi.lccs[name])

    def iter_notebook_instances(self) -> list[EmulatedNotebookInstance]:
        """Every instance, in creation order (what the CloudWatch Logs emulation ships logs for)."""
        with self._lock:
            return list(self._nbi.instances.values())

    @property
    def notebook_front_url(self) -> str:
        return self._nbi_front().url

    # -- the operations -------------------------------------------------------------------------

    def _op_CreateNotebookInstance(self, params: dict[str, Any], *, boot: bool = True) -> dict[str, Any]:
        name = _name(params, "NotebookInstanceName")
        _string(params, "InstanceType")
        role = _string(params, "RoleArn")
        if name in self._nbi.instances:
            raise _validation(
                f"Cannot create a duplicate Notebook Instance ({self._arn_of('notebook-instance', name)})"
            )
        lcc = params.get("LifecycleConfigName")
        if lcc is not None:
            self._lcc(lcc)
        workdir = self.workdir / "notebook-instances" / name
        workdir.mkdir(parents=True)
        arn = self._arn_of("notebook-instance", name)
        metadata = workdir / "resource-metadata.json"
        metadata.write_text(json.dumps({"ResourceArn": arn, "ResourceName": name}))
        now = time.time()
        instance = EmulatedNotebookInstance(
            name, arn, str(params["InstanceType"]), role, workdir, metadata, now, now, lcc
        )
        self._nbi.instances[name] = instance
        if boot:
            self._boot(instance)
        else:
            instance.status = "Stopped"
        return {"NotebookInstanceArn": arn}

    def _op_DescribeNotebookInstance(self, params: dict[str, Any]) -> dict[str, Any]:
        instance = self._instance(params)
        self._advance(instance)
        return instance.details(self.region)

    def _op_StopNotebookInstance(self, params: dict[str, Any]) -> dict[str, Any]:
        instance = self._instance(params)
        self._advance(instance)
        if instance.status != "InService":
            raise _validation(
                f"Status ({instance.status}) not in ([InService]). Unable to transition to (Stopping) for Notebook Instance ({instance.arn})."
            )
        instance.status = "Stopping"
        instance.stop_requested_at = time.time()
        self._spawn_thread(self._halt, instance)
        return {}

    def _op_StartNotebookInstance(self, params: dict[str, Any]) -> dict[str, Any]:
        instance = self._instance(params)
        self._advance(instance)
        if instance.status not in ("Stopped", "Failed"):
            raise _validation(
                f"Status ({instance.status}) not in ([Stopped, Failed]). Unable to transition to (Pending) for Notebook Instance ({instance.arn})."
            )
        instance.status = "Pending"
        instance.last_modified = time.time()
        instance.stop_requested_at = None
        self._boot(instance)
        return {}

    def _op_UpdateNotebookInstance(self, params: dict[str, Any]) -> dict[str, Any]:
        instance = self._instance(params)
        self._advance(instance)
        if instance.status not in ("Stopped", "Failed"):
            raise _validation(
                f"Status ({instance.status}) not in ([Stopped, Failed]). Unable to transition to (Updating) for Notebook Instance ({instance.arn})."
            )
        if params.get("DisassociateLifecycleConfig"):
            instance.lifecycle_config = None
        elif "LifecycleConfigName" in params:
            instance.lifecycle_config = str(
                self._lcc(params["LifecycleConfigName"])["NotebookInstanceLifecycleConfigName"]
            )
        instance.last_modified = time.time()
        return {}

    def _op_CreateNotebookInstanceLifecycleConfig(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _name(params, "NotebookInstanceLifecycleConfigName")
        if name in self._nbi.lccs:
            raise _validation(
                f"Unable to create Notebook Instance Lifecycle Config {self._arn_of('notebook-instance-lifecycle-config', name)}. (Error: Notebook Instance Lifecycle Config already exists.)"
            )
        now = time.time()
        arn = self._arn_of("notebook-instance-lifecycle-config", name)
        self._nbi.lccs[name] = {
            "NotebookInstanceLifecycleConfigArn": arn,
            "NotebookInstanceLifecycleConfigName": name,
            "OnCreate": _hooks(params, "OnCreate"),
            "OnStart": _hooks(params, "OnStart"),
            "CreationTime": now,
            "LastModifiedTime": now,
        }
        return {"NotebookInstanceLifecycleConfigArn": arn}

    def _op_DescribeNotebookInstanceLifecycleConfig(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self._lcc(params.get("NotebookInstanceLifecycleConfigName")))

    def _op_UpdateNotebookInstanceLifecycleConfig(self, params: dict[str, Any]) -> dict[str, Any]:
        lcc = self._lcc(params.get("NotebookInstanceLifecycleConfigName"))
        for key in ("OnCreate", "OnStart"):
            if key in params:
                lcc[key] = _hooks(params, key)
        lcc["LastModifiedTime"] = time.time()
        return {}

    def _op_ListNotebookInstanceLifecycleConfigs(self, params: dict[str, Any]) -> dict[str, Any]:
        contains = str(params.get("NameContains") or "")
        size = params.get("MaxResults", 10)
        if not isinstance(size, int) or not 1 <= size <= 100:
            raise _validation("MaxResults must be between 1 and 100")
        names = sorted(n for n in self._nbi.lccs if contains in n)
        start = int(params.get("NextToken") or 0)
        page = names[start : start + size]
        keys = (
            "NotebookInstanceLifecycleConfigName",
            "NotebookInstanceLifecycleConfigArn",
            "CreationTime",
            "LastModifiedTime",
        )
        out: dict[str, Any] = {
            "NotebookInstanceLifecycleConfigs": [{k: self._nbi.lccs[n][k] for k in keys} for n in page]
        }
        if start + size < len(names):
            out["NextToken"] = str(start + size)
        return out

    def _op_CreatePresignedNotebookInstanceUrl(self, params: dict[str, Any]) -> dict[str, Any]:
        instance = self._instance(params)
        expires = params.get("SessionExpirationDurationInSeconds", 43200)
        if not isinstance(expires, int) or not 1800 <= expires <= 43200:
            raise _validation("SessionExpirationDurationInSeconds must be between 1800 and 43200")
        token = secrets.token_urlsafe(24)
        # The URL itself is valid for 5 minutes (the session then lasts SessionExpirationDurationInSeconds).
        self._nbi.logins[token] = _NotebookLogin(instance.name, time.time() + 300)
        return {"AuthorizedUrl": f"{self.notebook_front_url}/auth?authToken={token}"}

    # -- the instances' life --------------------------------------------------------------------

    def _instance(self, params: dict[str, Any]) -> EmulatedNotebookInstance:
        name = _name(params, "NotebookInstanceName")
        instance = self._nbi.instances.get(name)
        if instance is None:
            raise _validation("RecordNotFound")
        return instance

    def _lcc(self, name: object) -> dict[str, Any]:
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > 63:
            raise _validation("NotebookInstanceLifecycleConfigName: invalid name")
        lcc = self._nbi.lccs.get(name)
        if lcc is None:
            raise _validation("RecordNotFound")
        return lcc

    def _advance(self, instance: EmulatedNotebookInstance) -> None:
        """Time-based transitions: Stopping becomes Stopped once the server is gone and deleting_s passed."""
        with instance.lock:
            if instance.status == "Stopping" and instance.stop_requested_at is not None:
                server_gone = instance.server is None or not instance.server.running
                if server_gone and time.time() >= instance.stop_requested_at + self.deleting_s:
                    instance.status = "Stopped"

    def _boot(self, instance: EmulatedNotebookInstance) -> None:
        self._spawn_thread(self._start_instance_server, instance)

    def _start_instance_server(self, instance: EmulatedNotebookInstance) -> None:
        begun = time.time()
        try:
            server = start_local_server(instance.workdir, token="", tls=self.notebook_tls)
        except Exception as exc:
            with instance.lock:
                instance.status = "Failed"
            raise AssertionError(f"the notebook instance's server did not start: {exc}") from exc
        time.sleep(max(0.0, begun + self.pending_s - time.time()))  # the instance's minimum Pending time
        with instance.lock:
            instance.server = server
            if instance.status == "Pending":
                instance.status = "InService"
                return
        server.stop()  # stopped while it was still coming up

    def _halt(self, instance: EmulatedNotebookInstance) -> None:
        with instance.lock:
            server = instance.server
        if server is not None:
            server.stop()

    def _spawn_thread(self, target: Any, instance: EmulatedNotebookInstance) -> None:
        thread = threading.Thread(target=target, args=(instance,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _arn_of(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{kind}/{name.lower()}"

    # -- the presigned login's front door -------------------------------------------------------

    def _nbi_front(self) -> StudioProxy:
        with self._lock:
            if self._nbi.front is None:
                self._nbi.front = StudioProxy(_NotebookFront(self))
            return self._nbi.front

    def _close_notebook_instances(self) -> None:
        if self._nbi.front is not None:
            self._nbi.front.close()
        for instance in self._nbi.instances.values():
            if instance.server is not None:
                instance.server.stop()


@dataclass
class _State:
    instances: dict[str, EmulatedNotebookInstance] = field(default_factory=dict)
    lccs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logins: dict[str, _NotebookLogin] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # notebook-session cookie → instance name
    front: StudioProxy | None = None


class _NotebookFront:
    """``{name}.notebook.{region}.sagemaker.aws``: the login page, then the instance's Jupyter server."""

    def __init__(self, ops: NotebookInstanceOps) -> None:
        self._ops = ops

    def front(self, method: str, target: str, cookies: dict[str, str]) -> Local | ToApp:
        parts = urlsplit(target)
        state = self._ops._nbi
        with self._ops._lock:
            if parts.path == "/auth" and method == "GET":
                token = (parse_qs(parts.query).get("authToken") or [""])[0]
                login = state.logins.get(token)
                if login is None or login.used or time.time() > login.expires_at:
                    return Local(403, "<html><body>Invalid or expired authentication token.</body></html>")
                login.used = True
                session = secrets.token_hex(16)
                state.sessions[session] = login.instance
                cookie = ("Set-Cookie", f"notebook-session={session}; Path=/; HttpOnly")
                return Local(302, "", headers=(cookie, ("Location", "/tree")))
            name = state.sessions.get(cookies.get("notebook-session", ""))
            if name is None:
                return Local(403, "<html><body>Not signed in to this notebook instance.</body></html>")
            instance = state.instances[name]
            if instance.status != "InService" or instance.server is None:
                return Local(404, f"<html><body>The notebook instance is {instance.status}.</body></html>")
            return ToApp(instance.server.port)


def _validation(message: str) -> Exception:
    from tests.emulators.sagemaker import _ApiError

    return _ApiError("ValidationException", message)


def _string(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise _validation(f"1 validation error detected: {key} must not be null")
    return value


def _name(params: dict[str, Any], key: str) -> str:
    value = _string(params, key)
    if len(value) > 63 or not _NAME.match(value):
        raise _validation(
            f"1 validation error detected: Value '{value}' at '{key}' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )
    return value


def _hooks(params: dict[str, Any], key: str) -> list[dict[str, str]]:
    hooks = params.get(key) or []
    if not isinstance(hooks, list) or len(hooks) > 1:
        raise _validation(f"{key}: at most one script")
    for hook in hooks:
        content = hook.get("Content") if isinstance(hook, dict) else None
        if not isinstance(content, str) or not 1 <= len(content) <= _MAX_CONTENT:
            raise _validation(f"{key}.Content: 1 to {_MAX_CONTENT} characters (base64 of the script)")
    return [{"Content": hook["Content"]} for hook in hooks]
