"""Attacks on other workspaces and on the host's network through the real API (issue 9, items
1 and 2): what a spec may make envctl read is its workspace's own namespace, the global
registry and the registries the operator allows, and no URL at all unless the operator allows
public ones. Two workspaces share one registry, on two namespaces: envctl's own policy, not
the registry's credentials, must stop the cross read."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server import Deployment, EnvctlServer, Tenant, build_outcome
from tests.conftest import Services


@pytest.fixture(scope="module")
def two(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, EnvctlServer, Tenant, Tenant, str]]:
    """One server, workspaces `victim` and `attacker` on two namespaces of one registry, and
    an image of the victim's (holding /secret) named by its full reference."""
    root = tmp_path_factory.mktemp("sources")
    with Deployment(services, root / "deployment") as deployment:
        server = deployment.serve()
        victim = deployment.workspace("victim")
        attacker = deployment.workspace("attacker")
        spec = f"base_image: {services.busybox_image}\ndocker_steps: RUN echo s3cret > /secret\n"
        queued = _post(server, victim, f"/v1/workspaces/{victim.name}/resolve", spec)
        assert queued.status_code == 202, queued.text
        done = build_outcome(server, victim, queued.json()["build_id"])
        assert done["status"] == "succeeded", done
        yield deployment, server, victim, attacker, done["image"]


def _post(server: EnvctlServer, tenant: Tenant, path: str, spec: str) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tenant.token}"},
        timeout=60.0, trust_env=False,
    ) as http:  # fmt: skip
        return http.post(path, json={"spec": spec, "name": "env.yml"})


def _refused(answer: httpx.Response, line: int | None, field: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()
    assert (error["error"], error["source"], error["line"]) == ("invalid_spec", "env.yml", line)
    assert field in (error["field"] or ""), error
    return error


def _steps(services: Services, *steps: str) -> str:
    """A spec on the busybox base; its first step is on line 3."""
    body = "".join(f"  {step}\n" for step in steps)
    return f"base_image: {services.busybox_image}\ndocker_steps: |\n{body}"


@pytest.mark.parametrize("route", ["resolve", "hash"])
def test_another_workspaces_image_as_base_image_is_refused(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], route: str
) -> None:
    _, server, _, attacker, stolen = two
    path = "/v1/hash" if route == "hash" else f"/v1/workspaces/{attacker.name}/resolve"
    error = _refused(_post(server, attacker, path, f"base_image: {stolen}\n"), 1, "base_image")
    assert "may read" in error["message"], error


@pytest.mark.parametrize(
    "step",
    [
        "COPY --from={image} /secret /stolen",
        "ADD --from={image} /secret /stolen",
        "RUN --mount=type=bind,from={image},target=/v cat /v/secret",
        "ONBUILD COPY --from={image} /secret /stolen",  # the trigger's flags are read too
    ],
)
def test_another_workspaces_image_in_a_step_is_refused(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services, step: str
) -> None:
    _, server, _, attacker, stolen = two
    spec = _steps(services, "RUN true", step.format(image=stolen))
    answer = _post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve", spec)
    _refused(answer, 4, "from")


@pytest.mark.parametrize("route", ["resolve", "hash"])
def test_another_workspaces_image_as_a_stage_is_refused(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services, route: str
) -> None:
    """An earlier stage's FROM is an image the build reads, as the base is: refused before
    its tag is pinned, and its name in a later --from is a stage, not an image."""
    _, server, _, attacker, stolen = two
    spec = _steps(services, f"FROM {stolen} AS loot", "FROM base_image",
                  "COPY --from=loot /secret /stolen")  # fmt: skip
    path = "/v1/hash" if route == "hash" else f"/v1/workspaces/{attacker.name}/resolve"
    error = _refused(_post(server, attacker, path, spec), 3, "FROM")
    assert "may read" in error["message"], error


@pytest.mark.parametrize(
    "steps",
    [
        ("FROM base_image AS cafe", "COPY --from=cafe / /loot"),  # its own stage
        ("COPY --from=0 / /loot",),  # no earlier stage
        ("FROM base_image AS env", "COPY --from=later / /loot", "FROM env AS later"),
    ],
)
def test_a_from_that_the_engine_would_read_as_an_image_by_id_prefix_is_refused(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str],
    services: Services,
    steps: tuple[str, ...],
) -> None:
    """The classic builder names a stage only once it is built: `--from=cafe` inside stage
    cafe, or before a later stage cafe, is an image to it, found among the engine's images by
    a prefix of their ids (`cafe…` may be another workspace's). Refused where it is written."""
    _, server, _, attacker, _ = two
    answer = _post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve",
                   _steps(services, *steps))  # fmt: skip
    error = _refused(answer, 3 + next(i for i, s in enumerate(steps) if "--from" in s), "from")
    assert "not built before this step" in error["message"], error


def test_a_buildkit_step_is_refused_before_a_build_starts(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services
) -> None:
    """The classic builder cannot build `RUN --mount`: said at once with its line, not by the
    engine once a build has run; keying it still works."""
    _, server, _, attacker, _ = two
    spec = _steps(services, "RUN true", "RUN --mount=type=cache,target=/c echo hi")
    error = _refused(_post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve", spec),
                     4, "RUN")  # fmt: skip
    assert "RUN --mount is a BuildKit feature" in error["message"], error
    assert _post(server, attacker, "/v1/hash", spec).status_code == 200


def test_a_registry_the_operator_did_not_allow_is_refused_before_it_is_asked(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str],
) -> None:
    _, server, _, attacker, _ = two
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    spec = f"base_image: 127.0.0.1:{port}/anything/image:1\n"
    _refused(_post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve", spec), 1,
             "base_image")  # fmt: skip
    with pytest.raises(BlockingIOError):
        listener.accept()  # the tag was never resolved there
    listener.close()


def test_the_workspaces_own_images_and_the_allowed_bases_still_build(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services
) -> None:
    """The victim may build on its own image; the attacker's hit on the victim's key is
    refused, not answered from memory."""
    _, server, victim, attacker, own = two
    spec = f"base_image: {own}\ndocker_steps: RUN cat /secret > /copy-{uuid.uuid4().hex}\n"
    queued = _post(server, victim, f"/v1/workspaces/{victim.name}/resolve", spec)
    assert queued.status_code == 202, queued.text
    assert build_outcome(server, victim, queued.json()["build_id"])["status"] == "succeeded"
    again = _post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve", spec)
    _refused(again, 1, "base_image")


@pytest.mark.parametrize(
    "source",
    [
        "http://127.0.0.1:{port}/v2/_catalog",
        "http://localhost:{port}/metrics",
        "https://169.254.169.254/latest/meta-data/",
        "git@127.0.0.1:repo.git",
        "github.com/moby/moby",
        "ONBUILD ADD http://127.0.0.1:{port}/x /y",
    ],
)
def test_add_of_a_url_is_refused_and_nothing_is_fetched(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services, source: str
) -> None:
    _, server, _, attacker, _ = two
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    url = source.format(port=listener.getsockname()[1])
    spec = _steps(services, url if url.startswith("ONBUILD") else f"ADD {url} /fetched")
    answer = _post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve", spec)
    error = _refused(answer, 3, "ADD")
    assert "URL" in error["message"], error
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


def test_a_variable_in_an_add_source_or_an_image_flag_is_refused(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services
) -> None:
    _, server, _, attacker, _ = two
    path = f"/v1/workspaces/{attacker.name}/resolve"
    spec = _steps(services, "ARG U=http://127.0.0.1:1/x", "ADD ${U} /fetched")
    assert "variable" in _refused(_post(server, attacker, path, spec), 4, "ADD")["message"]
    spec = _steps(services, "ARG I=anything", "COPY --from=$I /a /b")
    assert "variable" in _refused(_post(server, attacker, path, spec), 4, "COPY")["message"]


def test_a_pip_url_requirement_is_refused_and_nothing_is_fetched(
    two: tuple[Deployment, EnvctlServer, Tenant, Tenant, str], services: Services
) -> None:
    _, server, _, attacker, _ = two
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    spec = (
        f"base_image: {services.python_image}\n"
        "conda:\n  dependencies:\n  - pip:\n"
        f"    - six\n    - evil @ http://127.0.0.1:{port}/evil-1.0-py3-none-any.whl\n"
    )
    answer = _post(server, attacker, f"/v1/workspaces/{attacker.name}/resolve", spec)
    assert "pip" in _refused(answer, 6, "pip")["field"]
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


def test_with_url_sources_allowed_private_addresses_are_still_refused(
    services: Services, tmp_path: Path
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    env = {"ENVCTL_ALLOW_URL_SOURCES": "1"}
    with Deployment(services, tmp_path / "deployment", env=env) as deployment:
        server = deployment.serve()
        tenant = deployment.workspace("urls")
        path = f"/v1/workspaces/{tenant.name}/resolve"
        for url in (f"http://127.0.0.1:{port}/x", f"http://localhost:{port}/x",
                    "http://169.254.169.254/x", "http://10.1.2.3/x", "http://[::1]/x"):  # fmt: skip
            answer = _post(server, tenant, path, _steps(services, f"ADD {url} /fetched"))
            assert "not a public address" in _refused(answer, 3, "ADD")["message"], url
        answer = _post(server, tenant, path, _steps(services, "ADD git@github.com:a/b.git /b"))
        assert "http or https" in _refused(answer, 3, "ADD")["message"]
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
