"""What the builder's end-to-end tests share: a fresh workspace and home, the pip fixtures."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.oci import OciRegistry
from tests.conftest import FIXTURES, Services


@pytest.fixture
def workspace(
    services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[OciRegistry]:
    """A fresh workspace namespace and envctl home; builds hermetic (no network in steps)."""
    registry = OciRegistry(f"{services.workspace_registry}/build-{uuid.uuid4().hex[:12]}")
    env = {
        "ENVCTL_WORKSPACE_REGISTRY": registry.address,
        "ENVCTL_HOME": str(tmp_path / "home"),
        "ENVCTL_CHANNELS": services.channels,
        "ENVCTL_BUILD_NETWORK": "none",
        "DOCKER_HOST": services.docker_host,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ENVCTL_GLOBAL_REGISTRY", raising=False)
    yield registry
    registry.close()


def fixture_wheels(tmp_path: Path) -> Path:
    """The pip fixtures built into wheels (offline), in a folder to hand envctl as its
    find-links; its path."""
    sources = tmp_path / "pip-sources"
    shutil.copytree(FIXTURES / "pip", sources)  # building writes into the source folders
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(sources / "envctl-pydep"), str(sources / "envctl-pyhello")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return wheels
