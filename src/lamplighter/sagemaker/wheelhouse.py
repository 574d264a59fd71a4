"""The wheelhouse a lifecycle script installs lamplighter from, with no PyPI: ``lamplighter lcc bundle``.

lamplighter is not published on PyPI, and VPC-only domains reach no index at all. :func:`build_wheelhouse`
builds lamplighter's wheel from this source checkout and downloads the binary wheels of it and its
``sagemaker`` extra's dependencies for every CPython that SageMaker Distribution images run (3.10 on
v1.x, 3.11 on v2.6 to v3.2, 3.12 on v3.3 and later), for manylinux x86_64, all into one flat folder:
``pip install --no-index --find-links`` then picks the right ones for the image's Python. A
``manifest.json`` lists which wheels each Python takes, with their SHA-256. :func:`upload_wheelhouse`
copies the folder to an ``s3://`` prefix with boto3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamplighter import __version__
from lamplighter.errors import ConfigError, PlatformError

__all__ = ["MANIFEST", "PLATFORM", "PYTHONS", "build_wheelhouse", "source_checkout", "upload_wheelhouse"]

PYTHONS = ("3.10", "3.11", "3.12")
# pip widens a manylinux tag to the older ones it includes; 2014 is glibc 2.17, which every image has.
PLATFORM = "manylinux2014_x86_64"
MANIFEST = "manifest.json"


def source_checkout() -> Path | None:
    """The source checkout this lamplighter runs from (``pyproject.toml`` beside ``src/``), if any."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "lamplighter").is_dir() else None


def build_wheelhouse(
    dest: Path,
    *,
    source: Path | None = None,
    pythons: Sequence[str] = PYTHONS,
    pip_args: Sequence[str] = (),
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Fill ``dest`` with the wheels and ``manifest.json``; returns the manifest.

    ``pip_args`` go to every pip call (``--index-url`` of a mirror, say). Raises ``ConfigError`` when
    there is no checkout to build from, ``PlatformError`` when pip fails (its last lines say why).
    """
    source = source or source_checkout()
    if source is None or not (source / "pyproject.toml").is_file():
        raise ConfigError(
            "lcc bundle builds lamplighter from a source checkout: run it from one, or pass --source DIR"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lamplighter-bundle-") as scratch:
        built = Path(scratch) / "built"
        _pip(["wheel", "--no-deps", "--wheel-dir", str(built), str(source)], pip_args, timeout_s)
        wheels = sorted(built.glob("lamplighter-*.whl"))
        if not wheels:
            raise PlatformError(f"pip wheel {source}: no lamplighter wheel came out")
        own = wheels[-1]
        per_python: dict[str, list[str]] = {}
        for python in pythons:
            folder = Path(scratch) / f"cp{python.replace('.', '')}"
            _pip(
                [
                    "download",
                    "--only-binary=:all:",
                    "--platform",
                    PLATFORM,
                    "--implementation",
                    "cp",
                    "--python-version",
                    python,
                    "--dest",
                    str(folder),
                    f"lamplighter[sagemaker] @ {own.as_uri()}",
                ],
                pip_args,
                timeout_s,
            )
            names = sorted(path.name for path in folder.glob("*.whl"))
            per_python[python] = names
            for path in folder.glob("*.whl"):
                shutil.copyfile(path, dest / path.name)
    digests = {path.name: _sha256(path) for path in sorted(dest.glob("*.whl"))}
    manifest: dict[str, Any] = {
        "format": 1,
        "lamplighter": __version__,
        "lamplighter_wheel": own.name,
        "platform": PLATFORM,
        "pythons": per_python,
        "sha256": digests,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def upload_wheelhouse(folder: Path, uri: str, *, client: Any | None = None) -> list[str]:
    """Copy the folder's wheels and manifest to ``s3://bucket/prefix``; returns the keys written."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise ConfigError(f"--to {uri}: expected s3://bucket/prefix or a folder")
    if client is None:
        try:
            import boto3
        except ImportError:
            raise ConfigError("uploading to S3 needs boto3: pip install 'lamplighter[sagemaker]'") from None
        client = boto3.session.Session().client("s3")
    from botocore.exceptions import BotoCoreError, ClientError

    keys = []
    for path in sorted([*folder.glob("*.whl"), folder / MANIFEST]):
        key = f"{prefix.rstrip('/')}/{path.name}" if prefix.strip("/") else path.name
        try:
            # One PutObject per file (no multipart: the largest wheel is tens of MB, far below 5 GB).
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            raise PlatformError(f"cannot upload to s3://{bucket}/{key}: {code}") from None
        except BotoCoreError as exc:
            raise PlatformError(f"cannot upload to s3://{bucket}/{key}: {type(exc).__name__}") from None
        keys.append(key)
    return keys


def _pip(args: list[str], extra: Sequence[str], timeout_s: float) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args, *extra]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise PlatformError(f"pip {args[0]}: no result within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise PlatformError(f"pip {args[0]}: cannot run {sys.executable} ({exc.strerror})") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise PlatformError(f"pip {args[0]} failed (status {done.returncode}): {tail[:500]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
