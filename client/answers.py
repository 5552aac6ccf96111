"""Reading the envctl API's answers, shared by the sync and async clients (and the embedded
backend, which follows a build's log the same way): errors of the kind the server gave them,
resolve answers, log events, and a followed build's outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import httpx
from httpx_sse import ServerSentEvent

from client.errors import (
    BodyTooLarge,
    BuildFailed,
    NotFound,
    QueueFull,
    RemoteError,
    ServiceUnavailable,
    Unauthorized,
)
from client.models import BuildView, ImageView, LogEventView
from client.servers import AWAY_STATUSES, envctl_body
from hashing import SpecError
from hashing.errors import Kind

OnLog = Callable[[LogEventView], None]
LogItem = LogEventView | BuildView


def check(response: httpx.Response) -> None:
    """Raise the error an answer carries, of the kind the server gave it. An answer without
    envctl's error body is not the server's: a 502/503/504 then comes from a proxy in front of
    a server that is away (ServiceUnavailable: the client asks another address, or again)."""
    if response.is_success:
        return
    body = envctl_body(response)
    status = response.status_code
    if body is None:
        if status in AWAY_STATUSES:
            raise ServiceUnavailable(f"the envctl server is away (HTTP {status})")
        raise RemoteError(f"HTTP {status}: {response.reason_phrase}", kind=Kind.FAILED,
                          code="internal")  # fmt: skip
    kind, code = Kind(str(body["kind"])), str(body.get("error") or body["kind"])
    message = str(body.get("message") or response.reason_phrase)
    if code == "invalid_spec":
        raise SpecError(
            message,
            source=_text(body.get("source")),
            line=_number(body.get("line")),
            field=_text(body.get("field")),
        )
    if code == "invalid_request":
        raise SpecError(message, source="request", field=_text(body.get("field")))
    if kind is Kind.UNAUTHORIZED:
        raise Unauthorized(message)
    if kind is Kind.NOT_FOUND:
        raise NotFound(message)
    if status == 413:
        raise BodyTooLarge(message)
    if status == 429:
        raise QueueFull(message, retry_after=int(response.headers.get("Retry-After", "30")))
    raise RemoteError(message, kind=kind, code=code)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _number(value: object) -> int | None:
    return value if isinstance(value, int) else None


def resolved(response: httpx.Response) -> ImageView | BuildView:
    """A resolve's answer: the image (200), or the build that makes it (202)."""
    check(response)
    if response.status_code == 202:
        return BuildView.model_validate_json(response.content)
    return ImageView.model_validate_json(response.content)


def event(sse: ServerSentEvent) -> LogItem | None:
    """A log stream's event: a line, the build's final view (`end`), or None (pings, and
    events of later versions)."""
    if sse.event == "log":
        return LogEventView.model_validate_json(sse.data)
    if sse.event == "end":
        return BuildView.model_validate_json(sse.data)
    return None


def failure(view: BuildView) -> BuildFailed:
    """The error of a failed build."""
    return BuildFailed(
        view.message or "the build failed",
        failure_class=view.failure_class,
        build_id=view.build_id,
        kind=view.failure_kind or Kind.FAILED,  # the server's: it knows its error classes
    )


def take(item: LogItem, on_log: OnLog | None) -> BuildView | None:
    """Hand a log line to `on_log`; the build's view when the item is the stream's end."""
    if isinstance(item, BuildView):
        return item
    if on_log is not None:
        on_log(item)
    return None


def outcome(end: BuildView | None, started: BuildView) -> ImageView:
    """The image of a build whose stream ended with `end`, or its failure."""
    if end is None or end.status != "succeeded":
        raise failure(end or started)
    return end.image_view()


def image_after(items: Iterable[LogItem], on_log: OnLog | None, started: BuildView) -> ImageView:
    """Follow a build's log stream to its end: the image, or the build's failure."""
    end = None
    for item in items:
        end = take(item, on_log) or end
    return outcome(end, started)
