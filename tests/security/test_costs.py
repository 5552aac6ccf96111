"""Hostile input costs bounded memory and gets a clear answer (issue 9, item 4 and the 10 MB
line of item 9), through a real `envctl serve`: Docker's Go parser keeps what it parses, so
the server parses in a child process and its own memory stays where it was."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server import Deployment, EnvctlServer, Tenant
from tests.conftest import Services

HOSTILE_REQUESTS = 20
RSS_GROWTH_MB = 50


@pytest.fixture(scope="module")
def served(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EnvctlServer, Tenant]]:
    with Deployment(services, tmp_path_factory.mktemp("costs") / "deployment") as deployment:
        server = deployment.serve()
        yield server, deployment.workspace("costs")


def _hash(server: EnvctlServer, tenant: Tenant, spec: str) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tenant.token}"},
        timeout=120.0, trust_env=False,
    ) as http:  # fmt: skip
        return http.post("/v1/hash", json={"spec": spec, "name": "env.yml"})


def _steps(services: Services, lines: list[str]) -> str:
    """An envctl spec whose docker steps are `lines`; the first is on line 3."""
    return f"base_image: {services.busybox_image}\ndocker_steps: |\n" + "".join(
        f"  {line}\n" for line in lines
    )


def _rss_mb(server: EnvctlServer) -> float:
    assert server.process is not None
    for row in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _invalid(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    body: dict[str, Any] = answer.json()
    assert body["kind"] == "invalid", body
    return body


def test_a_bad_line_after_many_steps_is_found_and_the_servers_memory_stays(
    served: tuple[EnvctlServer, Tenant], services: Services
) -> None:
    server, tenant = served

    def hostile() -> str:  # a new spec each time: nothing is answered from memory
        nonce = uuid.uuid4().hex
        return _steps(services, [f"RUN echo {nonce} {n}" for n in range(2000)] + ["ENV a"])

    assert _invalid(_hash(server, tenant, hostile()))["line"] == 2003  # warm: the parser's child
    before = _rss_mb(server)
    for _ in range(HOSTILE_REQUESTS):
        body = _invalid(_hash(server, tenant, hostile()))
        assert (body["source"], body["line"]) == ("env.yml", 2003), body
        assert "ENV must have two arguments" in body["message"], body
    grown = _rss_mb(server) - before
    assert grown < RSS_GROWTH_MB, f"the server grew by {grown:.0f} MB"


def test_a_line_longer_than_dockers_parser_reads_is_named(
    served: tuple[EnvctlServer, Tenant], services: Services
) -> None:
    server, tenant = served
    spec = _steps(services, ["RUN true", "RUN echo " + "x" * (10 << 20)])
    body = _invalid(_hash(server, tenant, spec))
    assert body["line"] == 4, body
    assert "bytes long" in body["message"], body


def test_too_many_steps_are_refused_at_the_first_one_beyond_the_limit(
    served: tuple[EnvctlServer, Tenant], services: Services
) -> None:
    server, tenant = served
    body = _invalid(_hash(server, tenant, _steps(services, ["RUN true"] * 1500)))
    assert body["line"] == 1003, body
    assert "at most 1,000" in body["message"], body
