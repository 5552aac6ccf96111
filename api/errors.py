"""Errors of the service layer, and the one table that derives what every error means.

    EnvctlError
    └── ServiceError             a request the service cannot serve           kind
        ├── Unauthorized         no token, or not a live one                     unauthorized
        ├── NotFound             no such workspace, build or environment, or     not_found
        │                        not the caller's (never reveal another exists)
        ├── Conflict             a name is taken                                 conflict
        ├── BodyTooLarge         the request body is over the limit (413)        invalid
        ├── QueueFull            the workspace has too many builds queued (429)  unavailable
        ├── ServiceUnavailable   the server could not be reached (client side)   unavailable
        ├── RemoteError          an error a server answered (client side)        the server's
        └── BuildFailed          a build the client waited on failed             its error's

Every error class carries one `Kind` (hashing.errors); `OUTCOMES` turns a kind into the HTTP
status, the CLI's exit code and whether a client asks again, so that the embedded CLI and the
CLI through a server agree on every error. A few classes refine the status of their kind
(413, 429, 502). Anything that is not an EnvctlError is a bug (500), except the database's
and the disk's outages, which are `unavailable` like a registry's.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from builder.errors import DiskFull
from hashing.errors import EnvctlError, Kind, SpecError
from registry.errors import BaseImageNotFound, RegistryError

_DATABASE_OUTAGES = (OperationalError, InterfaceError, PoolTimeout)


@dataclass(frozen=True)
class Outcome:
    """What an error of one kind means to each caller."""

    status: int  # HTTP
    exit_code: int  # the CLI's
    retry: bool  # a client asks again (after backoff) instead of reporting it


EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE = 0, 1, 2, 3
OUTCOMES: dict[Kind, Outcome] = {
    Kind.INVALID: Outcome(422, EXIT_INVALID, retry=False),
    Kind.UNAUTHORIZED: Outcome(401, EXIT_INVALID, retry=False),  # the token: the user's to fix
    Kind.NOT_FOUND: Outcome(404, EXIT_FAILED, retry=False),
    Kind.CONFLICT: Outcome(409, EXIT_INVALID, retry=False),  # a name taken: choose another
    Kind.FAILED: Outcome(500, EXIT_FAILED, retry=False),
    # a dependency the server reports down: the client says so at once (exit 3); only a
    # server that cannot be reached at all (restarting) is asked again
    Kind.UNAVAILABLE: Outcome(503, EXIT_UNAVAILABLE, retry=False),
}
DATABASE_DOWN = "the build database is unavailable; try again shortly"


class ServiceError(EnvctlError):
    """A request the service cannot serve."""

    status: ClassVar[int | None] = None  # HTTP, when it refines its kind's
    code: ClassVar[str] = "failed"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class Unauthorized(ServiceError):
    """No bearer token, or one that is unknown or revoked."""

    kind = Kind.UNAUTHORIZED
    code = "unauthorized"


class NotFound(ServiceError):
    """No such workspace, build or environment for this caller."""

    kind = Kind.NOT_FOUND
    code = "not_found"


class Conflict(ServiceError):
    """What the request would create exists already (a workspace name is taken)."""

    kind = Kind.CONFLICT
    code = "conflict"


class BodyTooLarge(ServiceError):
    """The request body is larger than the service accepts."""

    kind = Kind.INVALID
    status = 413
    code = "body_too_large"


class QueueFull(ServiceError):
    """The workspace has as many builds queued as it may; try again after `retry_after` s
    (the one server answer a client waits out: the server says when)."""

    kind = Kind.UNAVAILABLE
    status = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ServiceUnavailable(ServiceError):
    """The envctl server could not be reached, or a proxy in front of it answered that it is
    away (restarting): the one condition a client retries."""

    kind = Kind.UNAVAILABLE
    code = "unavailable"


class RemoteError(ServiceError):
    """An error an envctl server answered, of the kind it classified it as (a registry,
    engine or database it needs is down, a registry refused its credentials, ...)."""

    def __init__(self, message: str, *, kind: Kind, code: str) -> None:
        self.kind = kind  # type: ignore[misc]  # per instance: the server's classification
        self.code = code  # type: ignore[misc]
        super().__init__(message)


class BuildFailed(ServiceError):
    """A build the client waited on failed; `failure_class` is the class of its error
    (SolveError, StepFailed, BuildTimeout, EngineUnavailable, ...), and its kind is that
    class's (`failure_kind`)."""

    def __init__(
        self,
        message: str,
        *,
        failure_class: str | None,
        build_id: str,
        kind: Kind | None = None,
    ) -> None:
        self.failure_class = failure_class
        self.build_id = build_id
        self.kind = kind or failure_kind(failure_class)  # type: ignore[misc]
        super().__init__(message)


def kind_of(exc: BaseException) -> Kind | None:
    """The kind of an error; None for a bug (anything envctl did not raise on purpose, but
    the database's and the disk's outages)."""
    if isinstance(exc, EnvctlError):
        return exc.kind
    if isinstance(exc, _DATABASE_OUTAGES):  # the database cannot be reached or used
        return Kind.UNAVAILABLE
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Kind.UNAVAILABLE
    return None


def http_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error code of an error, from its kind."""
    kind = kind_of(exc)
    if kind is None:
        return 500, "internal"
    status = OUTCOMES[kind].status
    if isinstance(exc, ServiceError):
        return exc.status or status, exc.code
    if isinstance(exc, SpecError | BaseImageNotFound):
        return status, "invalid_spec"
    if isinstance(exc, RegistryError) and kind is Kind.FAILED:
        return 502, "registry_error"  # a registry refused or answered what envctl cannot use
    return status, kind.value


def public_message(exc: BaseException) -> str:
    """An error's message as any caller may see it: a database's or a disk's outage says what
    is down, never the driver's details (hosts, ports, paths); a bug says nothing."""
    kind = kind_of(exc)
    if kind is None:
        return "internal error (the server's log has the details)"
    if isinstance(exc, SQLAlchemyError):
        return DATABASE_DOWN
    if isinstance(exc, OSError) and not isinstance(exc, EnvctlError):
        return DiskFull.MESSAGE
    return str(exc)


def exit_code(exc: BaseException) -> int:
    """The CLI's exit code of an error, from its kind; a bug is re-raised."""
    kind = kind_of(exc)
    if kind is None:
        raise exc
    return OUTCOMES[kind].exit_code


def failure_kind(failure_class: str | None) -> Kind:
    """The kind of a failed build, from its recorded error class."""
    if failure_class in {cls.__name__ for cls in _DATABASE_OUTAGES}:
        return Kind.UNAVAILABLE
    for cls in _subclasses(EnvctlError):  # a few dozen: looked up when a build has failed
        if cls.__name__ == failure_class:
            return cls.kind
    return Kind.FAILED


def _subclasses(cls: type[EnvctlError]) -> list[type[EnvctlError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]
