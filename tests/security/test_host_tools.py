"""Attacks on the builder host through the real API: a spec's pip options never reach the
host's pip (issue 9, item 3). Only requirement lines and allowlisted resolver options do; what
pip may read is the operator's ENVCTL_PIP_INDEX_URL / ENVCTL_PIP_FIND_LINKS."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.server import Deployment, EnvctlServer, Tenant, build_outcome
from tests.conftest import FIXTURES, Services


def _wheels(sources: Path, out: Path, *, version: str | None = None) -> Path:
    """Wheels of the two fixture packages (envctl-pyhello at `version` if given)."""
    copy = out.parent / f"{out.name}-sources"
    shutil.copytree(sources, copy)  # building writes into the source folders
    if version is not None:
        project = copy / "envctl-pyhello" / "pyproject.toml"
        project.write_text(project.read_text().replace('version = "2.0"', f'version = "{version}"'))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(copy / "envctl-pydep"), str(copy / "envctl-pyhello")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def operator(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, EnvctlServer, Path]]:
    """A server whose operator's pip source is one find-links folder (pyhello 2.0), and a
    folder only an attacker names (pyhello 9.0)."""
    root = tmp_path_factory.mktemp("host-tools")
    operator_wheels = _wheels(FIXTURES / "pip", root / "operator-wheels")
    secret = _wheels(FIXTURES / "pip", root / "secret-wheels", version="9.0")
    env = {"ENVCTL_PIP_FIND_LINKS": str(operator_wheels)}
    with Deployment(services, root / "deployment", env=env) as deployment:
        yield deployment, deployment.serve(), secret


def _resolve(server: EnvctlServer, tenant: Tenant, spec: str) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tenant.token}"},
        timeout=60.0, trust_env=False,
    ) as http:  # fmt: skip
        body = {"spec": spec, "name": "env.yml"}
        return http.post(f"/v1/workspaces/{tenant.name}/resolve", json=body)


def _pip_spec(services: Services, pip: list[str]) -> str:
    """An envctl spec (YAML) on the python base with this pip list; line 6 is its first entry."""
    return (
        f"base_image: {services.python_image}\n"
        f"docker_steps: RUN echo {uuid.uuid4().hex} > /nonce\n"
        "conda:\n  dependencies:\n  - pip:\n"
        + "".join(f"    - {json.dumps(line)}\n" for line in pip)
    )


@pytest.mark.parametrize(
    "option",
    ["--log={where}/pip.log", "--src={where}", "--cert={where}/ca.pem", "--no-binary=:all:"],
)
def test_a_pip_option_naming_a_host_path_is_422_and_writes_nothing(
    operator: tuple[Deployment, EnvctlServer, Path],
    services: Services,
    tmp_path: Path,
    option: str,
) -> None:
    deployment, server, _ = operator
    tenant = deployment.workspace(f"pipopt-{uuid.uuid4().hex[:8]}")
    answer = _resolve(server, tenant, _pip_spec(services, [option.format(where=tmp_path), "six"]))
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert (error["error"], error["source"], error["line"]) == ("invalid_spec", "env.yml", 6)
    assert "pip" in error["field"], error
    assert option.split("=")[0] in error["message"], error
    assert list(tmp_path.iterdir()) == [], "pip must never have run"


def test_a_specs_own_pip_sources_never_reach_the_hosts_pip(
    operator: tuple[Deployment, EnvctlServer, Path], services: Services
) -> None:
    """`--find-links` of a host folder and an `--extra-index-url` of a loopback service are
    accepted (conda's pip reads them) but pip reads only the operator's source."""
    deployment, server, secret = operator
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    tenant = deployment.workspace(f"pipsrc-{uuid.uuid4().hex[:8]}")
    spec = _pip_spec(services, [
        f"--find-links={secret}", f"--extra-index-url=http://127.0.0.1:{port}/simple",
        f"-i http://127.0.0.1:{port}/simple", "--trusted-host=127.0.0.1", "--pre",
        "envctl-pyhello",
    ])  # fmt: skip
    queued = _resolve(server, tenant, spec)
    assert queued.status_code == 202, queued.text
    done = build_outcome(server, tenant, queued.json()["build_id"])
    assert done["status"] == "succeeded", done
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tenant.token}"}, trust_env=False
    ) as http:
        metadata = http.get(f"/v1/workspaces/{tenant.name}/environments/{done['key']}").json()
    pins = [pin.split(" ")[0] for pin in metadata["pip_lock"].splitlines()]
    assert pins == ["envctl-pydep==1.0", "envctl-pyhello==2.0"], "only the operator's wheels"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected to the spec's index
    listener.close()
