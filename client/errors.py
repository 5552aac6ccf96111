"""The errors a caller of envctl sees, and the one table that derives what each means.

    EnvctlError                  (hashing.errors)
    └── ServiceError             a request the service cannot serve           kind
        ├── Unauthorized         no token, or not a live one                     unauthorized
        ├── NotFound             no such workspace, build or environment, or     not_found
        │                        not the caller's (never reveal another exists)
        ├── Conflict             a name is taken                                 conflict
        ├── BodyTooLarge         the request body is over the limit (413)        invalid
        ├── QueueFull            the workspace has too many builds queued (429)  unavailable
        ├── ServiceUnavailable   no address of the server answered (client side) unavailable
        ├── RemoteError          an error a server answered (client side)        the server's
        └── BuildFailed          a build the client waited on failed             its error's

Every error class carries one `Kind` (hashing.errors); `OUTCOMES` turns a kind into the HTTP
status, the CLI's exit code and whether a client asks again, so that the embedded CLI and the
CLI through a server agree on every error. A few classes refine the status of their kind
(413, 429). How the server classifies what is not one of these (a database's outage, a full
disk) is `service.errors`'; this module needs nothing of the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hashing.errors import EnvctlError, Kind


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
    """No address of the envctl service answered (refused, reset, timed out, or a proxy in
    front of it said it is away) for the client's bound (`unreachable_after`): until then the
    client asks the other addresses, and again (`client.servers`); the message names each."""

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
    (SolveError, StepFailed, BuildTimeout, EngineUnavailable, ...), and `kind` that class's,
    as the server classified it (`service.errors.failure_kind`)."""

    def __init__(
        self,
        message: str,
        *,
        failure_class: str | None,
        build_id: str,
        kind: Kind,
    ) -> None:
        self.failure_class = failure_class
        self.build_id = build_id
        self.kind = kind  # type: ignore[misc]  # the server's: it knows its error classes
        super().__init__(message)
