"""The API against its own OpenAPI schema: schemathesis sends what the schema allows (and what
it does not) to every operation of a running `envctl serve`; no answer may be a server error.

Bounded and deterministic: fifteen examples per operation of valid data and fifteen of invalid
data, derandomized, no example database. Every request carries a live token, or nearly
everything would stop at 401:

- the workspace in a path is, for every other generated name (by length), the token's own
  workspace, so that requests reach the service (builds, logs, environments); the names kept go
  with an admin token, which passes the workspace check, to the workspace lookup itself;
- resolve is sent with `build=false`. A generated spec that is valid would otherwise start a
  real build (and `wait` would hold the request for it). None is likely (a valid spec names a
  base image that exists, and the only ones are on a loopback registry the generator cannot
  know), but the bound should not rest on likelihood. The resolve path up to the build (spec,
  key, lookups) is fuzzed all the same.
- whatever a generated spec names beyond loopback (a base image on a made-up host) cannot
  leave the machine: the server's proxy settings send it to a closed loopback port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from tests.api.server import Deployment, EnvctlServer, Tenant
from tests.conftest import Services

MAX_EXAMPLES = 15  # per operation and mode: eight operations, 240 requests, about ten seconds


@dataclass(frozen=True)
class Target:
    """The server under test and the callers it knows."""

    server: EnvctlServer
    tenant: Tenant
    admin_token: str


@pytest.fixture(scope="module")
def target(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One server with one workspace, its token and an admin token."""
    root: Path = tmp_path_factory.mktemp("schema")
    with Deployment(services, root) as deployment:
        server = deployment.serve(wait=False)
        tenant = deployment.workspace("fuzz")
        _, admin = deployment.token(None)
        server.wait_healthy()
        yield Target(server, tenant, admin)


def test_no_operation_answers_a_server_error(target: Target) -> None:
    """Every operation of the published schema, with data the schema allows and data it does
    not: no 5xx. (One test over the schema the server serves, so that an operation added
    later is fuzzed too; `schemathesis.pytest.from_fixture` cannot run on pytest 9.)"""
    schema = schemathesis.openapi.from_url(f"{target.server.url}/openapi.json")
    schema.config.update(base_url=target.server.url)
    operations: list[APIOperation[Any, Any, Any, Any]] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an invalid operation: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = given(case=operation.as_strategy(generation_mode=mode))(_check(target))
            try:
                SETTINGS(run)()
            except Unsatisfiable:
                # no invalid request exists for an operation without inputs
                assert mode is GenerationMode.NEGATIVE, operation.label
            except BaseException as exc:
                exc.add_note(f"operation {operation.label}, {mode.value} data")
                raise
    # an answer is not all: a request whose handling crashed after it was answered is a
    # server error too (and costs the client its connection)
    log = target.server.log.read_text(errors="replace")
    assert "Exception in ASGI application" not in log, target.server.log_tail(80)


SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),  # slow and filtered data are expected here
)


def _check(target: Target) -> Callable[[Case[Any]], None]:
    def check(case: Case[Any]) -> None:
        token = target.tenant.token
        if "workspace" in case.path_parameters:
            if len(str(case.path_parameters["workspace"])) % 2 == 0:
                case.path_parameters["workspace"] = target.tenant.name
            else:
                token = target.admin_token
        case.headers = _with_token(case.headers, token)
        if case.operation.path.endswith("/resolve"):
            case.query = {**(case.query or {}), "build": "false"}
        response = case.call(timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    return check


def _with_token(headers: Any, token: str) -> Any:
    """The generated headers, with the generated Authorization replaced by a live token."""
    kept = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
    headers = type(headers)(kept) if headers is not None else kept
    headers["Authorization"] = f"Bearer {token}"
    return headers
