"""How the service classifies every error it meets: envctl's own by their kind, a database's
and a disk's outages as `unavailable` (never with the driver's details), anything else as a bug
(500). The error classes callers see, and the table of what each kind means, are
`client.errors`'.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from builder.errors import DiskFull
from client.errors import OUTCOMES, ServiceError
from hashing.errors import EnvctlError, Kind, SpecError
from registry.errors import BaseImageNotFound, RegistryError

_DATABASE_OUTAGES = (OperationalError, InterfaceError, PoolTimeout)


DATABASE_DOWN = "the build database is unavailable; try again shortly"


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
