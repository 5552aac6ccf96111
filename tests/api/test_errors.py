"""One table maps every error to an HTTP status, and one to a CLI exit code."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from api.cli import EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE, exit_code
from api.errors import (
    BodyTooLarge,
    BuildFailed,
    NotFound,
    QueueFull,
    ServiceUnavailable,
    Unauthorized,
    http_status,
)
from builder.errors import EngineUnavailable, StepFailed
from hashing import SpecError
from registry.errors import BaseImageNotFound, RegistryError, RegistryUnavailable


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (SpecError("bad", source="spec.yml", line=3), 422, "invalid_spec"),
        (BaseImageNotFound("no such base", endpoint="x"), 422, "invalid_spec"),
        (Unauthorized("no token"), 401, "unauthorized"),
        (NotFound("no build"), 404, "not_found"),
        (BodyTooLarge("too big"), 413, "body_too_large"),
        (QueueFull("full", retry_after=30), 429, "queue_full"),
        (RegistryUnavailable("down", endpoint="x"), 503, "unavailable"),
        (EngineUnavailable("down"), 503, "unavailable"),
        (RegistryError("odd answer", endpoint="x", status=400), 502, "registry_error"),
        (OperationalError("SELECT 1", {}, Exception("down")), 503, "unavailable"),
        (StepFailed("a step failed"), 500, "internal"),
        (BuildFailed("failed", failure_class="StepFailed", build_id="b"), 500, "internal"),
    ],
)
def test_every_error_has_one_http_status(error: Exception, status: int, code: str) -> None:
    assert http_status(error) == (status, code)


@pytest.mark.parametrize(
    ("failure_class", "code"),
    [
        ("SolveError", EXIT_FAILED),
        ("StepFailed", EXIT_FAILED),
        ("BuildTimeout", EXIT_FAILED),
        ("SpecError", EXIT_INVALID),
        ("BaseImageNotFound", EXIT_INVALID),
        ("EngineUnavailable", EXIT_UNAVAILABLE),
        ("ChannelUnavailable", EXIT_UNAVAILABLE),
        ("RegistryUnavailable", EXIT_UNAVAILABLE),
        (None, EXIT_FAILED),
    ],
)
def test_a_build_failed_on_a_server_exits_as_if_it_failed_here(
    failure_class: str | None, code: int
) -> None:
    assert exit_code(BuildFailed("x", failure_class=failure_class, build_id="b")) == code


def test_client_side_service_errors_have_exit_codes() -> None:
    assert exit_code(ServiceUnavailable("down")) == EXIT_UNAVAILABLE
    assert exit_code(QueueFull("full", retry_after=3)) == EXIT_UNAVAILABLE
    assert exit_code(Unauthorized("bad token")) == EXIT_INVALID
    assert exit_code(NotFound("none")) == EXIT_FAILED
