"""Fixtures for the CLI tests: real registries, configured the way a user configures envctl."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.oci import OciRegistry
from tests.conftest import Services


@pytest.fixture
def tiers(
    services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[OciRegistry, OciRegistry]]:
    """Fresh namespaces in both real registries and a fresh envctl home, set for the CLI
    through its environment variables (with the local channel and hermetic build steps)."""
    ns = f"cli-{uuid.uuid4().hex[:12]}"
    workspace = OciRegistry(f"{services.workspace_registry}/{ns}")
    global_ = OciRegistry(f"{services.global_registry}/{ns}")
    for name, value in {
        "ENVCTL_WORKSPACE_REGISTRY": workspace.address,
        "ENVCTL_GLOBAL_REGISTRY": global_.address,
        "ENVCTL_HOME": str(tmp_path / "home"),
        "ENVCTL_CHANNELS": services.channels,
        "ENVCTL_BUILD_NETWORK": "none",
    }.items():
        monkeypatch.setenv(name, value)
    yield workspace, global_
    workspace.close()
    global_.close()
