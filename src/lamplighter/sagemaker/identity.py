"""Which Studio app this is: :class:`AppIdentity` (domain, owner, type, name) and its Jupyter base path.

Inside an app the identity comes from ``/opt/ml/metadata/resource-metadata.json``
(:meth:`AppIdentity.from_metadata`); from the API it comes with each app ListApps or DescribeApp reports
(:class:`StudioApp`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lamplighter.errors import ConfigError, Unsupported
from lamplighter.model import parse_timestamp

__all__ = [
    "DEFAULT_METADATA_PATH",
    "JUPYTER_APP_TYPES",
    "AppIdentity",
    "StudioApp",
    "jupyter_base_url",
    "read_metadata_file",
]

DEFAULT_METADATA_PATH = Path("/opt/ml/metadata/resource-metadata.json")
JUPYTER_APP_TYPES = ("JupyterLab", "JupyterServer")
_JUPYTER_BASES = {"JupyterLab": "/jupyterlab/default/", "JupyterServer": "/jupyter/default/"}


def jupyter_base_url(app_type: str) -> str:
    """The Jupyter base path of an app type: ``/jupyterlab/default/``, or ``/jupyter/default/`` (Classic)."""
    try:
        return _JUPYTER_BASES[app_type]
    except KeyError:
        raise Unsupported(
            f"SageMaker {app_type} apps have no Jupyter server (only {', '.join(JUPYTER_APP_TYPES)})"
        ) from None


def read_metadata_file(path: Path, *, missing: str) -> dict[str, Any]:
    """The JSON object in a resource-metadata file; ``ConfigError`` if it cannot be read or is not one.

    ``missing`` is the hint after "not found; " (which platform expects the file, and the flag to use).
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


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
        data = read_metadata_file(path, missing="is this a SageMaker Studio app? (--sagemaker-metadata)")
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
