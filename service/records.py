"""What the service keeps: workspaces, their tokens, builds and build logs (frozen values).

The database behind them is `service.store.BuildStore`; everything else reads and writes these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from client.models import BuildStatus as BuildStatus  # the wire's: kept as the API says it

ACTIVE: tuple[BuildStatus, ...] = ("queued", "running")
GLOBAL_WORKSPACE = "_global"
"""The builds an admin token prewarms into the global registry are recorded under this name,
which no workspace can take (workspace names start with a letter or digit)."""


@dataclass(frozen=True)
class Workspace:
    """A tenant: its own registry namespace, tokens, builds and logs."""

    name: str
    registry: str  # HOST[:PORT]/NAMESPACE, or oci:PATH
    created_at: datetime


@dataclass(frozen=True)
class Token:
    """A bearer token's record (the secret itself is never stored, only its SHA-256)."""

    id: str
    workspace: str | None  # None for an admin token, which reaches every workspace
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None

    def reaches(self, workspace: str) -> bool:
        """True when this token may read and write `workspace`."""
        return self.revoked_at is None and (self.admin or self.workspace == workspace)


@dataclass(frozen=True)
class BuildRecord:
    """One build of one key in one workspace, from queued to its outcome."""

    id: str
    workspace: str
    key: str
    status: BuildStatus
    request: dict[str, Any]  # the resolve request as received: enough to run it again
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    image: str | None = None
    digest: str | None = None
    source: str | None = None  # built, or workspace/global when a retry found it done
    failure_class: str | None = None  # the error's class name: SolveError, StepFailed, ...
    message: str | None = None
    owner: str | None = None  # the service process running it
    lease_until: datetime | None = None
    attempts: int = 0

    @property
    def done(self) -> bool:
        """True once the build has an outcome."""
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True)
class FailureRecord:
    """A key's deterministic build failure, remembered in its workspace until a forced rebuild:
    every worker and server on the database answers it for that key."""

    workspace: str
    key: str
    kind: str  # the error's class name: SolveError, StepFailed, LayerError
    message: str
    build_id: str | None
    log_tail: str
    failed_at: datetime


@dataclass(frozen=True)
class LogLine:
    """One line of a build's log; `seq` counts from 1 and is the SSE event id."""

    seq: int
    stage: str
    text: str
    at: datetime
