"""Errors of the registry layer.

    EnvctlError
    └── RegistryError            a registry answered something envctl cannot use (endpoint, status)
        ├── RegistryUnavailable  it could not be reached, timed out or answered 5xx (transient)
        ├── RegistryAuthError    it refused the credentials (401/403)
        └── ImageNotFound        it answered that the image or tag does not exist (404)
            └── BaseImageNotFound  ... and that image is the base a spec names (the spec's error)

Errors are never misses: a registry that is down raises RegistryUnavailable, it does not answer
"not found" (that would start a build storm).
"""

from __future__ import annotations

from hashing.errors import EnvctlError, Kind


class RegistryError(EnvctlError):
    """A registry request failed; `endpoint` is the URL, `status` the HTTP status if any."""

    def __init__(self, message: str, *, endpoint: str, status: int | None = None) -> None:
        self.message = message
        self.endpoint = endpoint
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.message}: {self.endpoint}{status}"


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, timed out, or failed on its side (5xx)."""

    kind = Kind.UNAVAILABLE


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or their absence): the operator's to fix;
    trying again only locks the account."""


class ImageNotFound(RegistryError):
    """The registry says the repository or tag does not exist."""

    kind = Kind.NOT_FOUND


class BaseImageNotFound(ImageNotFound):
    """The base image a spec names does not exist: the spec is wrong, not the registry."""

    kind = Kind.INVALID
