"""Fuzzing the request body and the three spec formats through a real `envctl serve`
(issue 9): valid specs of each format, then mutated (bytes cut, replaced, repeated), and
arbitrary request bodies. No answer is a 500, the server logs no traceback, and nothing is
written outside ENVCTL_HOME. Bounded in `make test`; ENVCTL_FUZZ_EXAMPLES=N runs longer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from random import Random
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.server import Deployment, EnvctlServer, Tenant
from tests.conftest import Services
from tests.hashing.specgen import Style, conda_tree, envctl_tree, envs, specs, to_yaml

EXAMPLES = int(os.environ.get("ENVCTL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.fixture(scope="module")
def served(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EnvctlServer, Tenant, Path, httpx.Client]]:
    root = tmp_path_factory.mktemp("fuzz")
    with Deployment(services, root / "deployment") as deployment:
        server = deployment.serve()
        tenant = deployment.workspace("fuzz")
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {tenant.token}"},
            timeout=60.0, trust_env=False,
        ) as http:  # fmt: skip
            yield server, tenant, root / "deployment", http


def _outside_home(root: Path) -> set[str]:
    """Every path under the deployment's folder but its ENVCTL_HOME (and the server's log)."""
    return {
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.relative_to(root).parts[0] not in ("home",) and p.suffix != ".log"
    }  # fmt: skip


def _texts() -> st.SearchStrategy[tuple[str, str]]:
    """(name, text) of a spec in one of the three formats."""
    style = st.builds(Style, st.integers(0, 2**32).map(Random), st.booleans(), st.booleans())
    envctl = st.builds(lambda s, y: ("env.yml", to_yaml(envctl_tree(s), y)), specs(), style)
    conda = st.builds(lambda e, y: ("environment.yml", to_yaml(conda_tree(e), y)), envs(), style)
    azureml = st.builds(
        lambda e, image: ("azureml.yml", yaml.safe_dump(
            {"$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
             "name": "fuzz", "image": image, "conda_file": conda_tree(e)})),
        envs(), st.sampled_from(["ubuntu:22.04", "127.0.0.1:1/x/y:1", "bad image"]),
    )  # fmt: skip
    return st.one_of(envctl, conda, azureml)


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, str]:
    name, text = draw(_texts())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["cut", "insert", "repeat"]))
        if action == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif action == "insert":
            text = text[:at] + draw(st.text(max_size=8)) + text[at:]
        else:
            text = text[:at] * draw(st.integers(1, 3)) + text[at:]
    return name, text


def _check(served: tuple[EnvctlServer, Tenant, Path, httpx.Client], body: Any) -> None:
    _, tenant, _, http = served
    for path in ("/v1/hash", f"/v1/workspaces/{tenant.name}/resolve"):
        answer = http.post(path, content=json.dumps(body), params={"build": "false"},
                           headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code in (200, 202, 404, 413, 422, 503), (path, body, answer.text)


def test_specs_of_every_format_mutated_never_break_the_server(
    served: tuple[EnvctlServer, Tenant, Path, httpx.Client],
) -> None:
    before = _outside_home(served[2])

    @FUZZ
    @given(_mutated())
    def run(spec: tuple[str, str]) -> None:
        name, text = spec
        _check(served, {"spec": text, "name": name})

    run()
    assert _outside_home(served[2]) == before, "files written outside ENVCTL_HOME"
    log = served[0].log.read_text(errors="replace")
    assert "Traceback" not in log, served[0].log_tail(80)


def test_arbitrary_request_bodies_never_break_the_server(
    served: tuple[EnvctlServer, Tenant, Path, httpx.Client],
) -> None:
    scalar = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    value = st.recursive(
        scalar,
        lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=8), v, max_size=3),
        max_leaves=12,
    )
    files = st.lists(st.fixed_dictionaries(
        {"path": st.text(max_size=30), "kind": st.sampled_from(["file", "dir", "symlink", "x"])},
        optional={"mode": st.integers(-1, 0o177777), "content": st.text(max_size=12),
                  "target": st.text(max_size=20)}), max_size=3)  # fmt: skip
    body = st.fixed_dictionaries(
        {"spec": st.text(max_size=60) | st.dictionaries(st.text(max_size=10), value, max_size=4)},
        optional={"name": st.text(max_size=20), "files": files, "base_image": value,
                  "format": st.sampled_from(["envctl", "conda", "azureml", "x"])},
    ) | value  # fmt: skip

    @FUZZ
    @given(body)
    def run(request: Any) -> None:
        _check(served, request)

    run()
    log = served[0].log.read_text(errors="replace")
    assert "Traceback" not in log, served[0].log_tail(80)


@pytest.mark.parametrize(
    "body",
    [
        '{"spec": "base_image: busybox\\nvariables: {A: \\"\\ud800\\"}\\n"}',  # a lone surrogate
        '{"spec": "base_image: busybox\\n", "name": "\\udfff.yml"}',
        '{"spec": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}",  # nested 500 deep
        '{"spec": "' + "[" * 600 + '"}',  # YAML nested 600 deep
        '{"spec": "base_image: busybox\\n", "name": "' + "n" * 5000 + '"}',
    ],
    ids=["surrogate-in-spec", "surrogate-in-name", "json-500-deep", "yaml-600-deep", "long-name"],
)
def test_hostile_bodies_are_422(
    served: tuple[EnvctlServer, Tenant, Path, httpx.Client], body: str
) -> None:
    _, tenant, _, http = served
    for path in ("/v1/hash", f"/v1/workspaces/{tenant.name}/resolve"):
        answer = http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["kind"] == "invalid", answer.text


def _context_body(*files: dict[str, Any]) -> dict[str, Any]:
    spec = "base_image: busybox\ncontext: ctx\ndocker_steps: COPY . /ctx\n"
    return {"spec": spec, "files": [{"path": "ctx", "kind": "dir", "mode": 0o755}, *files]}


_DEEP = ["ctx" + "/d" * depth for depth in range(1, 2101)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_context_body({"path": "ctx/" + "n" * 5000}), "files[1].path"),
        (
            _context_body(
                {"path": "ctx/l", "kind": "symlink", "mode": 0o777, "target": "t" * 5000}
            ),
            "files[1].target",
        ),
        (
            _context_body(*({"path": p, "kind": "dir", "mode": 0o755} for p in _DEEP)),
            "files[511].path",
        ),
    ],
    ids=["5kB-file-name", "5000-character-link-target", "2100-nested-folders"],
)
def test_request_files_the_host_cannot_hold_are_422_and_leave_nothing(
    served: tuple[EnvctlServer, Tenant, Path, httpx.Client], body: dict[str, Any], field: str
) -> None:
    _, tenant, root, http = served
    before = sorted((root / "home").rglob("*"))
    for path in ("/v1/hash", f"/v1/workspaces/{tenant.name}/resolve"):
        answer = http.post(path, json=body)
        assert answer.status_code == 422, (path, answer.text[:500])
        assert answer.json()["source"] == field, answer.text[:500]
    assert sorted((root / "home").rglob("*")) == before
