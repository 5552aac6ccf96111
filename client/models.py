"""The HTTP API's answers (the request is `specio.request.ResolveRequest`): one pydantic model
each, shared by the server, which publishes them in its OpenAPI schema, and the client (the
server makes a BuildView of its record with `service.views.build_view`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hashing.errors import Kind

BuildStatus = Literal["queued", "running", "succeeded", "failed"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageView(_Answer):
    """An environment's image: 200 from resolve (a hit, or a build waited for)."""

    key: str
    image: str
    digest: str
    source: Literal["workspace", "global", "built"]
    build_id: str | None = None  # the build this call waited on, its own or one it joined


class BuildView(_Answer):
    """A build: 202 from resolve, and what `GET .../builds/{id}` answers."""

    build_id: str
    key: str
    status: BuildStatus
    position: int | None = None  # in the queue, while queued (1 = next)
    failure_class: str | None = None  # SolveError, StepFailed, BuildTimeout, ...
    failure_kind: Kind | None = None  # the kind of that error: the exit code follows from it
    message: str | None = None
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queued_seconds: float | None = None
    running_seconds: float | None = None
    image: str | None = None
    digest: str | None = None
    source: Literal["workspace", "global", "built"] | None = None
    attempts: int = 0

    def image_view(self) -> ImageView:
        """The image of a succeeded build, as resolve answers it."""
        assert self.image is not None
        assert self.digest is not None
        return ImageView(
            key=self.key,
            image=self.image,
            digest=self.digest,
            source=self.source or "built",
            build_id=self.build_id,
        )


class HashView(_Answer):
    """`POST /v1/hash`: the key and the canonical inputs it is the hash of."""

    key: str
    pinned: bool
    inputs: Any


class ErrorView(_Answer):
    """Every error answer: a code from the error table, a message, and where when known."""

    error: str
    kind: Kind  # what it means to the caller; the status and exit code follow from it
    message: str
    source: str | None = None
    line: int | None = None
    field: str | None = None


class LogEventView(_Answer):
    """The data of one `log` event of the build-log stream (its SSE id is `seq`)."""

    seq: int
    stage: str
    text: str
    at: datetime
