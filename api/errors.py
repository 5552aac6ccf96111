"""Errors of the service layer, and the one table that maps every error to an HTTP status.

    EnvctlError
    └── ServiceError             a request the service cannot serve
        ├── Unauthorized         no token, or not a live one                       401
        ├── NotFound             no such workspace, build or environment, or not   404
        │                        the caller's (never reveal that another exists)
        ├── BodyTooLarge         the request body is over the limit                 413
        ├── QueueFull            the workspace has too many builds queued          429
        ├── ServiceUnavailable   the server could not be reached (client side)     503
        └── BuildFailed          a build the client waited on failed (client side)

Errors of the lower layers keep their own classes and are mapped by `http_status`: an invalid
spec is 422, a registry, engine or channel that cannot be reached 503.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from builder.errors import ChannelUnavailable, EngineUnavailable
from hashing.errors import EnvctlError, SpecError
from registry.errors import BaseImageNotFound, RegistryError, RegistryUnavailable


class ServiceError(EnvctlError):
    """A request the service cannot serve; `status` is its HTTP status."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class Unauthorized(ServiceError):
    """No bearer token, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"


class NotFound(ServiceError):
    """No such workspace, build or environment for this caller."""

    status = 404
    code = "not_found"


class BodyTooLarge(ServiceError):
    """The request body is larger than the service accepts."""

    status = 413
    code = "body_too_large"


class QueueFull(ServiceError):
    """The workspace has as many builds queued as it may; try again after `retry_after` s."""

    status = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ServiceUnavailable(ServiceError):
    """The envctl server could not be reached, or answered that a service it needs is down."""

    status = 503
    code = "unavailable"


class BuildFailed(ServiceError):
    """A build the client waited on failed; `failure_class` is the server's error class
    (SolveError, StepFailed, BuildTimeout, EngineUnavailable, ...)."""

    UNAVAILABLE = frozenset({"EngineUnavailable", "ChannelUnavailable", "RegistryUnavailable"})
    INVALID = frozenset({"SpecError", "BaseImageNotFound"})

    def __init__(self, message: str, *, failure_class: str | None, build_id: str) -> None:
        self.failure_class = failure_class
        self.build_id = build_id
        super().__init__(message)

    @property
    def transient(self) -> bool:
        """True when the same build may succeed later (a service was down, or slow)."""
        return self.failure_class in self.UNAVAILABLE


HTTP_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (SpecError, 422, "invalid_spec"),
    (BaseImageNotFound, 422, "invalid_spec"),  # the spec names a base image that does not exist
    (RegistryUnavailable, 503, "unavailable"),
    (EngineUnavailable, 503, "unavailable"),
    (ChannelUnavailable, 503, "unavailable"),
    (OperationalError, 503, "unavailable"),  # the database cannot be reached
)
"""Lower layers' errors → (HTTP status, error code). ServiceErrors carry their own; anything
else is a 500 (a bug, or a registry answering something envctl cannot use: 502)."""


def http_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and error code of an error, from the one table."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code
    for kind, status, code in HTTP_STATUS:
        if isinstance(exc, kind):
            return status, code
    if isinstance(exc, RegistryError):
        return 502, "registry_error"
    return 500, "internal"
