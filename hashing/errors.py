"""Errors of the hashing layer.

    EnvctlError                 root of every envctl error (each layer adds its own subtree)
    └── SpecError               an environment definition is invalid: names file, line and field

A SpecError is always the user's to fix: the CLI maps it to exit code 2, the API to 422.
"""

from __future__ import annotations


class EnvctlError(Exception):
    """Root of every error envctl raises on purpose."""


class SpecError(EnvctlError):
    """An environment definition is invalid.

    `source` is the file (or API field) the problem is in, `line` its 1-based line if known,
    `field` the path of the offending value (`conda.dependencies[3]`), `message` what is wrong.
    """

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
