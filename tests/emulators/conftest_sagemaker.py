"""Fixtures for the SageMaker tests: the emulator, boto3 pointed at it, and a small domain.

Test modules load these with ``pytest_plugins = ["tests.emulators.conftest_sagemaker"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulators.sagemaker import SageMakerEmulator, StudioDomain, aws_env

__all__ = ["domain", "sm"]


@pytest.fixture
def sm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SageMakerEmulator]:
    """A running emulator with fast transitions; boto3 in this process reaches it with dummy credentials."""
    for name, value in aws_env("unused").items():
        monkeypatch.setenv(name, value)
    with SageMakerEmulator(tmp_path / "sagemaker", pending_s=0.05, deleting_s=0.1) as emulator:
        monkeypatch.setenv("LAMPLIGHTER_SAGEMAKER_ENDPOINT_URL", emulator.endpoint_url)
        yield emulator


@pytest.fixture
def domain(sm: SageMakerEmulator) -> StudioDomain:
    """A domain with user ``alice``, her private space ``alice-space`` and an unowned shared space ``team``."""
    domain_id = sm.add_domain()
    sm.add_user_profile(domain_id, "alice")
    sm.add_space(domain_id, "alice-space", owner="alice")
    sm.add_space(domain_id, "team")
    return StudioDomain(domain_id)
