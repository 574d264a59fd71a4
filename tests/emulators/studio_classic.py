"""Studio Classic's JupyterServer, emulated inside a real jupyter_server (loaded by the SageMaker emulator).

In Studio Classic the JupyterServer app's own SageMaker extension runs every kernel and image terminal
on a KernelGateway app of the user profile, one per image and instance type, creating the app on
first use. This module does the same against the emulated SageMaker API, with real boto3:

- kernelspecs are published as Classic images publish them, ``python3__SAGEMAKER_INTERNAL__{image
  ARN}``, with ``metadata.sme_metadata.environment_arn`` (:class:`ClassicKernelSpecManager`);
- ``POST {base}api/kernels`` takes ``instance_type`` (default ``ml.t3.medium``), creates the
  KernelGateway app for the image and instance type with ``CreateApp`` if the user has none, blocks
  until it is InService (as Studio does), then starts the kernel; kernel models carry ``app_name`` and
  ``instance_type`` (:class:`ClassicKernelManager`);
- ``POST {base}api/terminals`` with a name ``{image ARN}__{id}__{instance type}`` opens an image
  terminal, on an app made the same way (system terminals, ``1``, ``2``…, stay on the server);
- ``GET {base}sagemaker/api/apps`` lists the user's KernelGateway apps that are InService
  (``app_name, environment_arn, environment_name, image_name, instance_type, lifecycle_config_arn``,
  the members the AWS extension reads), ``DELETE {base}sagemaker/api/apps/{name}`` deletes one
  (``DeleteApp``; 204);
- when an app is no longer InService (deleted by anybody), the kernels and image terminals on it die,
  as they do when their instance goes away.

The emulator writes :func:`server_config` into the server's config folder; the kernels themselves are
local ipykernels (the instance is emulated, the Jupyter protocol is real).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, cast

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_server.base.handlers import APIHandler
from jupyter_server.services.kernels.handlers import MainKernelHandler
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import ensure_async, url_escape, url_path_join
from jupyter_server_terminals.api_handlers import TerminalRootHandler
from tornado import web
from tornado.ioloop import PeriodicCallback
from traitlets import Unicode

__all__ = ["IMAGES", "ClassicKernelManager", "ClassicKernelSpecManager", "server_config"]

MARK = "__SAGEMAKER_INTERNAL__"
#: The images this emulated domain offers: (image ARN, display name); SageMaker's own account.
IMAGES = (
    ("arn:aws:sagemaker:us-east-1:081325390199:image/datascience-1.0", "Data Science"),
    ("arn:aws:sagemaker:us-east-1:081325390199:image/pytorch-1.10-gpu-py38", "PyTorch 1.10 GPU"),
)
DEFAULT_INSTANCE = "ml.t3.medium"


def server_config(
    *, metadata_path: Path, endpoint_url: str, region: str, repo_root: Path, extra: str = ""
) -> str:
    """The ``jupyter_server_config.py`` of an emulated Classic JupyterServer app (``extra``: more lines)."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return "\n".join(
        [
            "import os, sys",
            f"sys.path.insert(0, {str(repo_root)!r})",
            *(f"os.environ[{k!r}] = {v!r}" for k, v in env.items()),
            "c = get_config()  # noqa: F821",
            'c.ServerApp.jpserver_extensions = {"tests.emulators.studio_classic": True}',
            'c.ServerApp.kernel_manager_class = "tests.emulators.studio_classic.ClassicKernelManager"',
            'c.ServerApp.kernel_spec_manager_class = "tests.emulators.studio_classic.ClassicKernelSpecManager"',
            f"c.ClassicKernelManager.metadata_path = {str(metadata_path)!r}",
            f"c.ClassicKernelManager.endpoint_url = {endpoint_url!r}",
            # Where SageMaker keeps it in a real app: lamplighter reads the app's identity there.
            f"os.environ['LAMPLIGHTER_SAGEMAKER_METADATA'] = {str(metadata_path)!r}",
            extra,
            "",
        ]
    )


def app_name_for(user: str, image_arn: str, instance_type: str) -> str:
    """Studio's names are ``{image}-{instance}-{hash}``, the same each time (so a re-created app reuses it)."""
    image = image_arn.rpartition("/")[2]
    digest = hashlib.sha256(f"{user}/{image_arn}/{instance_type}".encode()).hexdigest()[:8]
    return re.sub(r"[^a-zA-Z0-9]+", "-", f"{image}-{instance_type}-{digest}").strip("-")[:63]


class ClassicKernelSpecManager(KernelSpecManager):
    """Publishes each local kernelspec once per image, under Studio Classic's names."""

    def get_all_specs(self) -> dict[str, Any]:
        specs = {}
        for local, entry in super().get_all_specs().items():
            for arn, display in IMAGES:
                spec = dict(entry["spec"])
                spec["display_name"] = f"{spec.get('display_name', local)} ({display})"
                spec["metadata"] = {
                    "sme_metadata": {"environment_arn": arn, "instance_type": DEFAULT_INSTANCE}
                }
                specs[f"{local}{MARK}{arn}"] = {"resource_dir": entry["resource_dir"], "spec": spec}
        return specs

    def get_kernel_spec(self, kernel_name: str) -> Any:
        local, mark, arn = kernel_name.partition(MARK)
        if mark and arn not in dict(IMAGES):
            raise web.HTTPError(404, f"No such kernel spec: {kernel_name}")
        return super().get_kernel_spec(local)


class _Studio:
    """The user's KernelGateway apps, through boto3 against the emulated API."""

    def __init__(self, metadata_path: str, endpoint_url: str) -> None:
        import boto3

        metadata = json.loads(Path(metadata_path).read_text())
        self.domain_id = metadata["DomainId"]
        self.user = metadata["UserProfileName"]
        region = metadata["ResourceArn"].split(":")[3]
        self.client: Any = boto3.client("sagemaker", region_name=region, endpoint_url=endpoint_url)

    def apps(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"DomainIdEquals": self.domain_id, "UserProfileNameEquals": self.user}
            if token:
                params["NextToken"] = token
            answer = self.client.list_apps(**params)
            out += [a for a in answer["Apps"] if a["AppType"] == "KernelGateway"]
            token = answer.get("NextToken")
            if not token:
                return out

    def ensure_app(self, image_arn: str, instance_type: str, timeout_s: float = 60.0) -> str:
        """The app for the image and instance type, created if need be; returns once it is InService."""
        name = app_name_for(self.user, image_arn, instance_type)
        key = {"DomainId": self.domain_id, "UserProfileName": self.user, "AppType": "KernelGateway"}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                status = self.client.describe_app(**key, AppName=name)["Status"]
            except self.client.exceptions.ResourceNotFound:
                status = "Deleted"
            if status == "InService":
                return name
            if status == "Deleted" or status == "Failed":
                with contextlib.suppress(self.client.exceptions.ResourceInUse):
                    self.client.create_app(
                        **key,
                        AppName=name,
                        ResourceSpec={"SageMakerImageArn": image_arn, "InstanceType": instance_type},
                    )
            time.sleep(0.05)
        raise web.HTTPError(504, f"KernelGateway app {name} did not come up")

    def delete(self, name: str) -> None:
        self.client.delete_app(
            DomainId=self.domain_id, UserProfileName=self.user, AppType="KernelGateway", AppName=name
        )


class ClassicKernelManager(AsyncMappingKernelManager):
    """Starts each kernel on a KernelGateway app; kernels die with their app."""

    metadata_path = Unicode(config=True)
    endpoint_url = Unicode(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.placed: dict[str, tuple[str, str]] = {}  # kernel id → (app name, instance type)
        self.default_kernel_name = f"python3{MARK}{IMAGES[0][0]}"
        self._studio: _Studio | None = None

    @property
    def studio(self) -> _Studio:
        if self._studio is None:
            self._studio = _Studio(self.metadata_path, self.endpoint_url)
        return self._studio

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: str | None = None, **kwargs: Any
    ) -> str:
        instance_type = kwargs.pop("instance_type", None) or DEFAULT_INSTANCE
        name = kwargs.get("kernel_name") or self.default_kernel_name
        kwargs["kernel_name"] = name
        _, mark, arn = name.partition(MARK)
        if not mark:
            raise web.HTTPError(400, f"{name} is not a Studio image kernel")
        app_name = await asyncio.to_thread(self.studio.ensure_app, arn, instance_type)
        kernel_id = await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)  # type: ignore[arg-type]
        self.placed[kernel_id] = (app_name, instance_type)
        return str(kernel_id)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        model: dict[str, Any] = super().kernel_model(kernel_id)  # type: ignore[no-untyped-call]
        if kernel_id in self.placed:
            model["app_name"], model["instance_type"] = self.placed[kernel_id]
        return model


def _studio(handler: APIHandler) -> _Studio:
    return cast(ClassicKernelManager, handler.kernel_manager).studio


class KernelsHandler(MainKernelHandler):
    """``POST {base}api/kernels`` with Studio Classic's ``instance_type``."""

    @web.authenticated
    async def post(self) -> None:
        km = self.kernel_manager
        body = self.get_json_body() or {}
        kernel_id = await km.start_kernel(
            kernel_name=body.get("name") or km.default_kernel_name,
            path=body.get("path"),
            instance_type=body.get("instance_type"),
        )
        model = await ensure_async(km.kernel_model(kernel_id))  # type: ignore[no-untyped-call]
        self.set_header("Location", url_path_join(self.base_url, "api", "kernels", url_escape(kernel_id)))
        self.set_status(201)
        self.finish(json.dumps(model, default=str))


class TerminalsHandler(TerminalRootHandler):
    """``POST {base}api/terminals``: an image terminal's KernelGateway app is made before the terminal."""

    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        name = str(body.get("name") or "")
        if name.startswith("arn:"):
            arn, _, rest = name.partition("__")
            instance_type = rest.split("__")[1] if "__" in rest else DEFAULT_INSTANCE
            await asyncio.to_thread(_studio(self).ensure_app, arn, instance_type)
        model = self.settings["terminal_manager"].create(**body)
        self.finish(json.dumps(model, default=str))


class AppsHandler(APIHandler):
    """``{base}sagemaker/api/apps[/{name}]``: the user's KernelGateway apps."""

    @web.authenticated
    async def get(self, name: str = "") -> None:
        studio = _studio(self)
        apps = await asyncio.to_thread(studio.apps)
        images = dict(IMAGES)
        listed = []
        for app in apps:
            if app["Status"] != "InService":  # the endpoint shows the apps that are up
                continue
            spec = app.get("ResourceSpec") or {}
            arn = spec.get("SageMakerImageArn", "")
            listed.append(
                {
                    "app_name": app["AppName"],
                    "environment_arn": arn,
                    "environment_name": arn.rpartition("/")[2],
                    "image_name": images.get(arn, ""),
                    "instance_type": spec.get("InstanceType", ""),
                    "lifecycle_config_arn": None,
                }
            )
        self.finish(json.dumps(listed))

    @web.authenticated
    async def delete(self, name: str = "") -> None:
        studio = _studio(self)
        try:
            await asyncio.to_thread(studio.delete, name)
        except studio.client.exceptions.ResourceNotFound:
            raise web.HTTPError(404, f"No app {name}") from None
        self.set_status(204)
        self.finish()


def _reap(serverapp: Any) -> None:
    """Kernels and image terminals on an app that is no longer InService die with it."""
    km = serverapp.web_app.settings["kernel_manager"]
    terminals = serverapp.web_app.settings.get("terminal_manager")
    busy = {"running": False}

    async def check() -> None:
        if busy["running"]:
            return
        image_terminals = [n for n in (terminals.terminals if terminals else {}) if n.startswith("arn:")]
        if not km.placed and not image_terminals:
            return
        busy["running"] = True
        try:
            apps = await asyncio.to_thread(km.studio.apps)
            alive = {a["AppName"] for a in apps if a["Status"] == "InService"}
            alive_keys = {
                (
                    (a.get("ResourceSpec") or {}).get("SageMakerImageArn"),
                    (a.get("ResourceSpec") or {}).get("InstanceType"),
                )
                for a in apps
                if a["Status"] == "InService"
            }
            for kernel_id, (app_name, _) in list(km.placed.items()):
                if app_name not in alive:
                    km.placed.pop(kernel_id, None)
                    if kernel_id in km:
                        await km.shutdown_kernel(kernel_id, now=True)
            for name in image_terminals:
                parts = name.split("__")
                if len(parts) >= 3 and (parts[0], parts[2]) not in alive_keys:
                    await terminals.terminate(name, force=True)
        except Exception as exc:  # the emulated instance keeps going; the log says why
            serverapp.log.warning("studio classic emulator: %s", exc)
        finally:
            busy["running"] = False

    PeriodicCallback(check, 200).start()


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "api/kernels"), KernelsHandler),
            (url_path_join(base, "api/terminals"), TerminalsHandler, {"name": "jupyter_server_terminals"}),
            (url_path_join(base, "sagemaker/api/apps"), AppsHandler),
            (url_path_join(base, "sagemaker/api/apps/([^/]+)"), AppsHandler),
        ],
    )
    # Studio's own extension answers before jupyter_server's: its rule goes first.
    rules = serverapp.web_app.default_router.rules
    rules.insert(0, rules.pop(-2))
    _reap(serverapp)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "tests.emulators.studio_classic"}]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("loaded by jupyter_server, not run")
