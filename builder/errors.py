"""Errors of the builder layer.

    EnvctlError
    └── BuildError             a build failed; carries the build id and the tail of its log
        ├── SolveError         deterministic: the conda dependencies cannot be satisfied
        ├── StepFailed         deterministic: an install step or a docker step failed
        ├── LayerError         deterministic: a tree holds what a layer cannot (a device, a FIFO)
        │   └── CorruptLayer   transient: a cached layer was corrupt and is dropped; made again
        ├── BuildTimeout       the build ran longer than its limit (not remembered: load-dependent)
        ├── EngineUnavailable  transient: the Docker engine could not be reached
        ├── ChannelUnavailable transient: a conda channel could not be reached
        └── DiskFull           transient: envctl's own disk (ENVCTL_HOME) is full

A deterministic failure is remembered per key and returned at once to the next caller (until
`--force-rebuild`); a transient one (kind unavailable) is retried with backoff and never
remembered; a timeout is neither.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hashing.errors import EnvctlError, Kind


class BuildError(EnvctlError):
    """A build failed. `deterministic` says whether the same inputs would fail again."""

    deterministic = False

    def __init__(self, message: str, *, build_id: str | None = None, log_tail: str = "") -> None:
        self.message = message
        self.build_id = build_id
        self.log_tail = log_tail
        super().__init__(message)

    def __str__(self) -> str:
        where = f"build {self.build_id}: " if self.build_id else ""
        tail = f"\n{self.log_tail.rstrip()}" if self.log_tail else ""
        return f"{where}{self.message}{tail}"


class SolveError(BuildError):
    """The solver found no set of packages satisfying the spec; the message says why."""

    deterministic = True


class StepFailed(BuildError):
    """A step of the build exited non-zero."""

    deterministic = True


class LayerError(BuildError):
    """A tree cannot be written as a layer: it holds a device, socket or FIFO."""

    deterministic = True


class CorruptLayer(LayerError):
    """A cached layer's bytes are not its digest (a disk error, a hand edit). Its entry is
    gone when this is raised, so the same build made again succeeds: retried, not remembered."""

    deterministic = False
    kind = Kind.UNAVAILABLE


class BuildTimeout(BuildError):
    """The build ran past its time limit (not remembered: it depends on the load; not
    retried at once either: another attempt would hold a worker as long again)."""


class EngineUnavailable(BuildError):
    """The Docker engine could not be reached."""

    kind = Kind.UNAVAILABLE


class ChannelUnavailable(BuildError):
    """A conda channel could not be reached (transient: retried, never remembered)."""

    kind = Kind.UNAVAILABLE


class DiskFull(BuildError):
    """envctl's own disk (ENVCTL_HOME: the package cache, build folders) is full: an operator
    must free space; the same build may succeed then."""

    kind = Kind.UNAVAILABLE
    MESSAGE = "envctl's disk is full (no space left in ENVCTL_HOME); an operator must free space"

    def __init__(self, *, build_id: str | None = None) -> None:
        super().__init__(self.MESSAGE, build_id=build_id)


def disk_error(exc: OSError) -> Exception:
    """A full disk as DiskFull (without the path, which is the host's); any other OSError as
    it is."""
    return DiskFull() if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc


FULL_BYTES = 1 << 20  # free space under which a disk counts as full


def disk_full(path: Path) -> bool:
    """True when the filesystem holding `path` has (almost) no space left for envctl."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < FULL_BYTES
