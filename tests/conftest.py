"""Shared test fixtures: the real services started by `scripts/services`, and a CLI runner.

A missing service is a failure, never a skip: `make test` starts them, and a test that needs one
says so loudly when it is not there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from registry.auth import Credentials
from registry.oci import OciRegistry

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
EXAMPLES = ROOT / "examples"
# The real corpora live beside the checkout, never in it (`../shared/corpus`, as CI has them), or
# where ENVCTL_CORPUS says. Without them, the tests that read them are left out and the header
# says so; ENVCTL_REQUIRE_CORPUS=1 (.ci/run) makes their absence a failure instead.
SHARED_CORPUS = Path(os.environ.get("ENVCTL_CORPUS") or ROOT.parent / "shared" / "corpus")
CORPUS = SHARED_CORPUS / "azureml-examples"
PUBLIC_CORPUS = SHARED_CORPUS / "public-repos"
HAS_CORPUS = (CORPUS / "index.json").is_file() and (PUBLIC_CORPUS / "manifest.json").is_file()
needs_corpus = pytest.mark.corpus


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "corpus: reads the real corpora in ../shared/corpus")
    if not HAS_CORPUS and os.environ.get("ENVCTL_REQUIRE_CORPUS") == "1":
        pytest.exit(f"the corpus is required and absent: no {SHARED_CORPUS}", returncode=4)


def pytest_report_header() -> str:
    if HAS_CORPUS:
        return f"corpus: {SHARED_CORPUS}"
    return f"corpus: absent ({SHARED_CORPUS}): the tests that read it are left out"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CORPUS:
        return
    left_out = [item for item in items if item.get_closest_marker("corpus") is not None]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item.get_closest_marker("corpus") is None]


@dataclass(frozen=True)
class Services:
    """Addresses of the running services (from `scripts/services env`)."""

    docker_host: str
    second_docker_host: str  # another engine, as another host has (build workers' tests)
    workspace_registry: str
    global_registry: str
    base_image: str
    busybox_image: str
    python_image: str  # the Debian base with python3 and pip (apt)
    channels: str  # the local conda channel's root URL, e.g. http://127.0.0.1:5003/
    database_url: str  # PostgreSQL for the build store: postgresql+psycopg://envctl@HOST:PORT/DB
    # Two registries behind htpasswd, one per workspace, as a cloud gives each its own:
    # `HOST:PORT` and the one user of each (named after its registry).
    alpha_registry: str
    alpha_credentials: Credentials
    beta_registry: str
    beta_credentials: Credentials

    @property
    def global_host(self) -> str:
        """`127.0.0.1:PORT` of the global registry."""
        return self.global_registry.split("/", 1)[0]

    @property
    def base_registry(self) -> str:
        """`HOST:PORT/NAMESPACE` the test base images live in (a server must allow it)."""
        return self.base_image.rsplit("/", 1)[0]


def copy_with_fixed_modes(source: Path, target: Path) -> Path:
    """Copy a fixture tree with modes 0755 (dirs, *.sh) and 0644 (files).

    Modes are part of a build context's key, and a checkout's umask must not move golden keys.
    """
    shutil.copytree(source, target)
    for folder, _, files in os.walk(target):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o755 if name.endswith(".sh") else 0o644)
    return target


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: start the services with `scripts/services up` and "
            f'`eval "$(scripts/services env)"` (make test does both)'
        )
    return value


@pytest.fixture(scope="session")
def services() -> Services:
    """The real Docker engine, OCI registries and conda channel; fails when they are not running."""
    return Services(
        docker_host=_require("DOCKER_HOST"),
        second_docker_host=_require("ENVCTL_TEST_DOCKER_HOST_2"),
        workspace_registry=_require("ENVCTL_WORKSPACE_REGISTRY"),
        global_registry=_require("ENVCTL_GLOBAL_REGISTRY"),
        base_image=_require("ENVCTL_TEST_BASE_IMAGE"),
        busybox_image=_require("ENVCTL_TEST_BUSYBOX_IMAGE"),
        python_image=_require("ENVCTL_TEST_PYTHON_IMAGE"),
        channels=_require("ENVCTL_CHANNELS"),
        database_url=_require("ENVCTL_TEST_DATABASE_URL"),
        alpha_registry=_require("ENVCTL_TEST_ALPHA_REGISTRY"),
        alpha_credentials=Credentials("alpha", _require("ENVCTL_TEST_ALPHA_PASSWORD")),
        beta_registry=_require("ENVCTL_TEST_BETA_REGISTRY"),
        beta_credentials=Credentials("beta", _require("ENVCTL_TEST_BETA_PASSWORD")),
    )


def docker(services: Services, *args: str) -> str:
    """Run the Docker CLI against the test engine; return stdout, fail loudly on error."""
    result = subprocess.run(
        ["docker", *args],
        env={**os.environ, "DOCKER_HOST": services.docker_host},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner for the envctl CLI, in-process, with stdout and stderr kept apart."""
    monkeypatch.delenv("ENVCTL_BASE_IMAGE", raising=False)
    return CliRunner()


# The real servers of tests/registry/servers.py (registries with auth, a token service) are
# fixtures for every package: the CLI tests in tests/api need an htpasswd registry too.
pytest_plugins = ("tests.registry.servers",)


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


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (path relative to `root` -> text) under `root`, folders made; `root`."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
