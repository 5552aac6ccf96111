"""Errors of the hashing layer, and the kinds every envctl error is one of.

    EnvctlError                 root of every envctl error (each layer adds its own subtree)
    └── SpecError               an environment definition is invalid: names file, line and field

Each error class carries one `Kind`; everything a caller sees is derived from it by one table
(`service.errors.OUTCOMES`): the HTTP status, the error body's `kind`, the CLI's exit code, whether
a client or the builder tries again, and what a failed build records. A SpecError is always
the user's to fix: invalid, so the CLI exits 2 and the API answers 422.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Kind(StrEnum):
    """What an error means to whoever gets it."""

    INVALID = "invalid"  # the caller's input is wrong: fix it, do not retry
    NOT_FOUND = "not_found"  # no such thing (or not the caller's)
    UNAUTHORIZED = "unauthorized"  # no live credential
    UNAVAILABLE = "unavailable"  # a service envctl needs is down or busy: later may work
    FAILED = "failed"  # the operation failed, and would again with the same inputs
    CONFLICT = "conflict"  # it clashes with what exists (a name taken)


class EnvctlError(Exception):
    """Root of every error envctl raises on purpose."""

    kind: ClassVar[Kind] = Kind.FAILED


class SpecError(EnvctlError):
    """An environment definition is invalid.

    `source` is the file (or API field) the problem is in, `line` its 1-based line if known,
    `field` the path of the offending value (`conda.dependencies[3]`), `message` what is wrong.
    """

    kind = Kind.INVALID

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.source is None and self.field is None:
            return self.message
        where = self.source or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"
