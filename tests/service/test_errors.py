"""One classification: each error class has one kind, and its HTTP status, exit code, the
error body's kind and a client's reading of that body all follow from it."""

from __future__ import annotations

import errno

import httpx
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from api.app import _error_response
from builder.errors import BuildError, BuildTimeout, EngineUnavailable, SolveError, StepFailed
from cli.main import EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE, exit_code
from client.errors import (
    OUTCOMES,
    BodyTooLarge,
    BuildFailed,
    Conflict,
    NotFound,
    QueueFull,
    RemoteError,
    ServiceUnavailable,
    Unauthorized,
)
from client.http import check
from hashing import SpecError
from hashing.errors import EnvctlError, Kind
from registry.errors import (
    BaseImageNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
)
from service.errors import failure_kind, http_status, kind_of, public_message

DRIVER = 'connection to server at "10.9.8.7", port 5432 failed: Connection refused'
ERRORS: list[tuple[BaseException, int, str, Kind]] = [
    (SpecError("bad", source="spec.yml", line=3, field="x"), 422, "invalid_spec", Kind.INVALID),
    (BaseImageNotFound("no such base", endpoint="x"), 422, "invalid_spec", Kind.INVALID),
    (Unauthorized("no token"), 401, "unauthorized", Kind.UNAUTHORIZED),
    (NotFound("no build"), 404, "not_found", Kind.NOT_FOUND),
    (Conflict("workspace 'a' already exists"), 409, "conflict", Kind.CONFLICT),
    (BodyTooLarge("too big"), 413, "body_too_large", Kind.INVALID),
    (QueueFull("full", retry_after=30), 429, "queue_full", Kind.UNAVAILABLE),
    (RegistryUnavailable("down", endpoint="x"), 503, "unavailable", Kind.UNAVAILABLE),
    (EngineUnavailable("down"), 503, "unavailable", Kind.UNAVAILABLE),
    (RegistryError("odd answer", endpoint="x", status=400), 502, "registry_error", Kind.FAILED),
    (RegistryAuthError("refused", endpoint="x", status=401), 502, "registry_error", Kind.FAILED),
    (OperationalError("SELECT 1", {}, Exception(DRIVER)), 503, "unavailable", Kind.UNAVAILABLE),
    (OSError(errno.ENOSPC, "No space left on device"), 503, "unavailable", Kind.UNAVAILABLE),
    (StepFailed("a step failed"), 500, "failed", Kind.FAILED),
    (
        BuildFailed("failed", failure_class="StepFailed", build_id="b", kind=Kind.FAILED),
        500,
        "failed",
        Kind.FAILED,
    ),
]


@pytest.mark.parametrize(("error", "status", "code", "kind"), ERRORS)
def test_every_error_has_one_kind_and_its_status_follows(
    error: BaseException, status: int, code: str, kind: Kind
) -> None:
    assert kind_of(error) is kind
    assert http_status(error) == (status, code)
    assert exit_code(error) == OUTCOMES[kind].exit_code


@pytest.mark.parametrize(("error", "status", "code", "kind"), ERRORS)
def test_a_client_reads_every_answer_as_the_same_kind_exit_code_and_message(
    error: BaseException, status: int, code: str, kind: Kind
) -> None:
    """What the CLI through a server prints and exits with is what the embedded CLI would."""
    answer = _error_response(error)  # type: ignore[arg-type]
    response = httpx.Response(
        answer.status_code, content=bytes(answer.body), headers=answer.headers
    )
    with pytest.raises(EnvctlError) as caught:
        check(response)
    assert response.json()["kind"] == kind.value
    assert kind_of(caught.value) is kind
    assert exit_code(caught.value) == exit_code(error)
    assert public_message(caught.value) == public_message(error)
    assert not isinstance(caught.value, ServiceUnavailable), "an envctl answer is not retried"


def test_a_database_outage_answer_names_no_host_or_port() -> None:
    answer = _error_response(OperationalError("SELECT 1", {}, Exception(DRIVER)))
    assert b"10.9.8.7" not in answer.body
    assert b"5432" not in answer.body
    assert b"database is unavailable" in answer.body


def test_bugs_are_500_without_details_and_the_cli_does_not_hide_them() -> None:
    for bug in (ValueError("/srv/secret/path"), IntegrityError("INSERT", {}, Exception("dup"))):
        assert kind_of(bug) is None
        answer = _error_response(bug)
        assert (answer.status_code, b"/srv/secret" in answer.body) == (500, False)
        with pytest.raises(type(bug)):
            exit_code(bug)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_only_a_proxys_answer_for_an_away_server_is_retried(status: int) -> None:
    with pytest.raises(ServiceUnavailable):
        check(httpx.Response(status, text="<html>bad gateway</html>"))
    with pytest.raises(RemoteError) as caught:
        check(httpx.Response(status, json={"error": "unavailable", "kind": "unavailable",
                                           "message": "the registry is down"}))  # fmt: skip
    assert exit_code(caught.value) == EXIT_UNAVAILABLE


@pytest.mark.parametrize(
    ("failure_class", "code"),
    [
        ("SolveError", EXIT_FAILED),
        ("StepFailed", EXIT_FAILED),
        ("BuildTimeout", EXIT_FAILED),
        ("BuildError", EXIT_FAILED),
        ("SpecError", EXIT_INVALID),
        ("BaseImageNotFound", EXIT_INVALID),
        ("EngineUnavailable", EXIT_UNAVAILABLE),
        ("ChannelUnavailable", EXIT_UNAVAILABLE),
        ("RegistryUnavailable", EXIT_UNAVAILABLE),
        ("RegistryAuthError", EXIT_FAILED),
        ("OperationalError", EXIT_UNAVAILABLE),
        (None, EXIT_FAILED),
    ],
)
def test_a_failed_build_exits_by_the_kind_of_its_error(
    failure_class: str | None, code: int
) -> None:
    kind = failure_kind(failure_class)  # as the server says it, in the build's view
    assert exit_code(BuildFailed("x", failure_class=failure_class, build_id="b", kind=kind)) == code


def test_every_error_class_has_a_kind_a_status_and_an_exit_code() -> None:
    def every(cls: type[EnvctlError]) -> list[type[EnvctlError]]:
        return [cls, *(sub for direct in cls.__subclasses__() for sub in every(direct))]

    for cls in every(EnvctlError):
        assert cls.kind in OUTCOMES, cls
        assert failure_kind(cls.__name__) is cls.kind, cls
    assert {BuildError.kind, BuildTimeout.kind, SolveError.kind} == {Kind.FAILED}
