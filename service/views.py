"""A build record as the API and the embedded CLI show it."""

from __future__ import annotations

from client.models import BuildView
from service.errors import failure_kind
from service.records import BuildRecord


def build_view(record: BuildRecord, position: int | None = None) -> BuildView:
    """The view of a build record; `position` in the queue while it is queued."""
    started, finished = record.started_at, record.finished_at
    return BuildView(
        build_id=record.id,
        key=record.key,
        status=record.status,
        position=position,
        failure_class=record.failure_class,
        failure_kind=None if record.status != "failed" else failure_kind(record.failure_class),
        message=record.message,
        queued_at=record.queued_at,
        started_at=started,
        finished_at=finished,
        queued_seconds=None if started is None else (started - record.queued_at).total_seconds(),
        running_seconds=None
        if started is None or finished is None
        else (finished - started).total_seconds(),
        image=record.image,
        digest=record.digest,
        source=record.source,  # type: ignore[arg-type]
        attempts=record.attempts,
    )
