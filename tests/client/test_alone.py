"""A client installed alone (issue 12): `pip install envctl`, without the `server` extra, has
no SQLAlchemy, FastAPI, docker, rattler, Docker's parser, uvicorn or the builder's tools, and
its `envctl resolve` works through a server, whose checks answer for the spec.

The environment is a fresh virtualenv holding exactly what `pip install envctl` would: the
distributions `project.dependencies` names and what they require (markers evaluated, extras
not taken), linked from this one's site-packages (no package index is asked), and envctl's
own packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.api.server import Deployment, EnvctlServer, Tenant
from tests.conftest import ROOT, Services

SERVER_PARTS = ("sqlalchemy", "fastapi", "docker", "rattler", "dockerfile", "uvicorn", "installer")
OWN_PACKAGES = ("hashing", "specio", "client", "registry", "builder", "service", "api", "cli")


def _closure(names: list[str]) -> set[str]:
    """The distributions `pip install` of these requirements brings, by normalized name."""
    seen: set[str] = set()
    todo = [Requirement(name) for name in names]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:  # an optional one of a platform we are not on
            continue
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        todo += [Requirement(text) for text in dist.requires or []]
    return seen


def _top_level(name: str) -> Iterator[str]:
    """The names a distribution puts in site-packages (its modules, packages, .dist-info)."""
    for file in distribution(name).files or []:
        top = file.parts[0]
        if top not in ("..", "__pycache__") and not top.endswith(".pth"):
            yield top


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the client's distributions only; its python."""
    root = tmp_path_factory.mktemp("alone")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True)  # fmt: skip
    ours = Path(sysconfig.get_paths()["purelib"])
    linked = root / "site"
    linked.mkdir()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name in sorted(_closure(project["dependencies"])):
        for top in set(_top_level(name)):
            if (ours / top).exists() and not (linked / top).exists():
                (linked / top).symlink_to(ours / top)
    for package in OWN_PACKAGES:
        (linked / package).symlink_to(ROOT / package)
    python = root / "venv" / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", where], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    (Path(site) / "envctl-client.pth").write_text(f"{linked}\n")
    return python


def test_the_server_parts_are_not_there(alone: Path) -> None:
    for module in SERVER_PARTS:
        probe = subprocess.run([str(alone), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the client's environment"


@pytest.fixture(scope="module")
def served(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EnvctlServer, Tenant]]:
    with Deployment(services, tmp_path_factory.mktemp("server")) as deployment:
        yield deployment.serve(), deployment.workspace("runner")


def _envctl(
    python: Path, server: EnvctlServer, tenant: Tenant, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVCTL_", "PYTHON"))}
    env |= {"ENVCTL_URL": server.url, "ENVCTL_TOKEN": tenant.token}
    env["ENVCTL_WORKSPACE"] = tenant.name
    code = "import sys; from cli.main import main; sys.argv[0] = 'envctl'; main()"
    return subprocess.run([str(python), "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_client_alone_resolves_through_a_server(
    alone: Path, served: tuple[EnvctlServer, Tenant], services: Services, tmp_path: Path
) -> None:
    """A spec naming a conda file and a build context: gathered unparsed, built by the server."""
    server, tenant = served
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "greeting.txt").write_text("hello from the client\n")
    (tmp_path / "env.yml").write_text("dependencies: [envctl-greet, envctl-hello >=2]\n")
    spec = tmp_path / "spec.envctl.yml"
    spec.write_text(
        f"base_image: {services.base_image}\nconda: env.yml\ncontext: ctx\n"
        "docker_steps: COPY greeting.txt /greeting.txt\n"
    )
    built = _envctl(alone, server, tenant, "resolve", str(spec))
    assert built.returncode == 0, built.stderr
    image = built.stdout.strip()
    assert image.startswith(server.env["ENVCTL_WORKSPACE_REGISTRY"]), image
    again = _envctl(alone, server, tenant, "resolve", str(spec))
    assert (again.returncode, again.stdout.strip()) == (0, image)
    assert again.stderr.startswith("workspace"), again.stderr  # a hit


def test_the_servers_checks_answer_for_a_spec_the_client_could_not_parse(
    alone: Path, served: tuple[EnvctlServer, Tenant], services: Services, tmp_path: Path
) -> None:
    (tmp_path / "env.yml").write_text("dependencies:\n  - numpy >>>= 1\n")
    spec = tmp_path / "spec.envctl.yml"
    spec.write_text(f"base_image: {services.base_image}\nconda: env.yml\n")
    refused = _envctl(alone, served[0], served[1], "resolve", str(spec))
    assert refused.returncode == 2, refused.stderr
    assert "env.yml:2" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
