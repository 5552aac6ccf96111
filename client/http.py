"""The Python client of the envctl API (httpx), sync and async; the CLI and runners use it.

    with EnvctlClient(url, token, workspace="team-a") as envctl:
        image = envctl.resolve_image(request_from_file("env.yml"), on_log=print)
        run(image.image)

`resolve_image` is the runner's one call: a hit answers at once; on a miss it follows the build's
log until the build is over and returns the image or raises the build's failure (`BuildFailed`).
A dropped connection or a server restarting mid-build is waited out (the build survives in the
database) until `timeout`. Request building and answer reading are shared by both clients,
which only differ in how they do I/O.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from client.errors import (
    BodyTooLarge,
    BuildFailed,
    NotFound,
    QueueFull,
    RemoteError,
    ServiceUnavailable,
    Unauthorized,
)
from client.models import BuildView, HashView, ImageView, LogEventView
from hashing import SpecError
from hashing.errors import Kind
from specio.request import ResolveRequest

OnLog = Callable[[LogEventView], None]
LogItem = LogEventView | BuildView
POLL = 30.0  # seconds one request waits on the server for a build to finish
RECONNECT = 60.0  # seconds a log stream without a deadline keeps trying to reconnect
_AWAY_STATUSES = {502, 503, 504}  # from a proxy, without envctl's error body


class _Calls:
    """What both clients share: URLs, bodies and reading answers."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace

    def ws(self, path: str) -> str:
        return f"/v1/workspaces/{self.workspace}{path}"

    @staticmethod
    def resolve_params(wait: float, build: bool, force_rebuild: bool) -> dict[str, Any]:
        return {
            "wait": wait,
            "build": str(build).lower(),
            "force_rebuild": str(force_rebuild).lower(),
        }

    @staticmethod
    def body(request: ResolveRequest) -> dict[str, Any]:
        return request.model_dump(mode="json", exclude_defaults=True)

    @staticmethod
    def resolved(response: httpx.Response) -> ImageView | BuildView:
        check(response)
        if response.status_code == 202:
            return BuildView.model_validate_json(response.content)
        return ImageView.model_validate_json(response.content)

    @staticmethod
    def event(sse: ServerSentEvent) -> LogItem | None:
        if sse.event == "log":
            return LogEventView.model_validate_json(sse.data)
        if sse.event == "end":
            return BuildView.model_validate_json(sse.data)
        return None  # pings and events of later versions


def check(response: httpx.Response) -> None:
    """Raise the error an answer carries, of the kind the server gave it. An answer without
    envctl's error body is not the server's: a 502/503/504 then comes from a proxy in front of
    a server that is away (ServiceUnavailable, the one error a client waits out)."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if not isinstance(body, dict) or body.get("kind") not in Kind.__members__.values():
        if status in _AWAY_STATUSES:
            raise ServiceUnavailable(f"the envctl server is away (HTTP {status})")
        raise RemoteError(f"HTTP {status}: {response.reason_phrase}", kind=Kind.FAILED,
                          code="internal")  # fmt: skip
    kind, code = Kind(body["kind"]), str(body.get("error") or body["kind"])
    message = str(body.get("message") or response.reason_phrase)
    if code == "invalid_spec":
        raise SpecError(
            message, source=body.get("source"), line=body.get("line"), field=body.get("field")
        )
    if code == "invalid_request":
        raise SpecError(message, source="request", field=body.get("field"))
    if kind is Kind.UNAUTHORIZED:
        raise Unauthorized(message)
    if kind is Kind.NOT_FOUND:
        raise NotFound(message)
    if status == 413:
        raise BodyTooLarge(message)
    if status == 429:
        raise QueueFull(message, retry_after=int(response.headers.get("Retry-After", "30")))
    raise RemoteError(message, kind=kind, code=code)


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


def _retry_in(exc: Exception, attempt: int, deadline: float) -> float:
    """Seconds before asking again after `exc` (a server away, or its queue full); `exc`
    again when that would pass the deadline."""
    wait = exc.retry_after if isinstance(exc, QueueFull) else _backoff(attempt)
    if time.monotonic() + wait > deadline:
        raise exc
    return wait


class _Stream:
    """A log stream's place (its last line) and its reconnecting: without a deadline, a
    server away for RECONNECT seconds in a row ends it."""

    def __init__(self, after: int, deadline: float | None) -> None:
        self.after = after
        self._deadline = deadline
        self._attempt = 0
        self._failing_since: float | None = None

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.after)} if self.after else {}

    def seen(self, item: LogItem) -> bool:
        """Note an item; True at the stream's end."""
        if isinstance(item, BuildView):
            return True
        self.after = item.seq
        self._attempt, self._failing_since = 0, None
        return False

    def retry_in(self) -> float:
        """Seconds before reconnecting; ServiceUnavailable when it is time to give up."""
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        if now > (self._deadline or self._failing_since + RECONNECT):
            raise ServiceUnavailable("the envctl server stopped answering")
        self._attempt += 1
        return _backoff(self._attempt - 1)


def _backoff(attempt: int) -> float:
    return min(10.0, 0.2 * 2.0 ** min(attempt, 8)) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter


class EnvctlClient:
    """Synchronous client of one workspace of an envctl server."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        workspace: str,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._calls = _Calls(workspace)
        self._http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=POLL + timeout),
            transport=transport,
        )

    def __enter__(self) -> EnvctlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def hash(self, request: ResolveRequest) -> HashView:
        """The key the server computes for a spec, with its canonical inputs."""
        response = self._send("POST", "/v1/hash", json=_Calls.body(request))
        check(response)
        return HashView.model_validate_json(response.content)

    def resolve(
        self,
        request: ResolveRequest,
        *,
        wait: float = 0,
        build: bool = True,
        force_rebuild: bool = False,
    ) -> ImageView | BuildView:
        """One resolve call: the image (hit), or the build that makes it."""
        response = self._send(
            "POST",
            self._calls.ws("/resolve"),
            json=_Calls.body(request),
            params=_Calls.resolve_params(wait, build, force_rebuild),
        )
        return _Calls.resolved(response)

    def build(self, build_id: str, *, wait: float = 0) -> BuildView:
        """A build's status (waiting on the server up to `wait` seconds for its end)."""
        response = self._send("GET", self._calls.ws(f"/builds/{build_id}"), params={"wait": wait})
        check(response)
        return BuildView.model_validate_json(response.content)

    def environment(self, key: str) -> dict[str, Any]:
        """The metadata stored with an environment's image."""
        response = self._send("GET", self._calls.ws(f"/environments/{key}"))
        check(response)
        result: dict[str, Any] = response.json()
        return result

    def logs(
        self, build_id: str, *, after: int = 0, follow: bool = True, deadline: float | None = None
    ) -> Iterator[LogItem]:
        """The build's log lines, live, then its final view; a dropped stream is resumed
        from the last line seen (Last-Event-ID). Without a `deadline`, a server that stays
        away for RECONNECT seconds raises ServiceUnavailable."""
        stream = _Stream(after, deadline)
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    self._calls.ws(f"/builds/{build_id}/logs"),
                    headers=stream.headers(),
                    params={"follow": str(follow).lower()},
                ) as source:
                    if not source.response.is_success:
                        source.response.read()  # an error's body, before it is read as one
                    check(source.response)
                    for sse in source.iter_sse():
                        item = _Calls.event(sse)
                        if item is not None:
                            yield item
                            if stream.seen(item):
                                return
            except (httpx.TransportError, ServiceUnavailable):
                pass
            time.sleep(stream.retry_in())  # backoff before reconnecting, not synchronisation

    def resolve_image(
        self,
        request: ResolveRequest,
        *,
        on_log: OnLog | None = None,
        timeout: float = 3600.0,
        force_rebuild: bool = False,
    ) -> ImageView:
        """The environment's image, built if need be: follows the build's log (to `on_log`)
        and raises BuildFailed when it fails. Waits out a restarting server."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                answer = self.resolve(request, force_rebuild=force_rebuild)
                break
            except (httpx.TransportError, ServiceUnavailable, QueueFull) as exc:
                time.sleep(_retry_in(exc, attempt, deadline))  # backoff, not synchronisation
                attempt += 1
        if isinstance(answer, ImageView):
            return answer
        return image_after(self.logs(answer.build_id, deadline=deadline), on_log, answer)

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"envctl server {self._http.base_url}: {exc}") from exc


class AsyncEnvctlClient:
    """Asynchronous client of one workspace of an envctl server (same calls, awaited)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        workspace: str,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._calls = _Calls(workspace)
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=POLL + timeout),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncEnvctlClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def hash(self, request: ResolveRequest) -> HashView:
        """The key the server computes for a spec, with its canonical inputs."""
        response = await self._send("POST", "/v1/hash", json=_Calls.body(request))
        check(response)
        return HashView.model_validate_json(response.content)

    async def resolve(
        self,
        request: ResolveRequest,
        *,
        wait: float = 0,
        build: bool = True,
        force_rebuild: bool = False,
    ) -> ImageView | BuildView:
        """One resolve call: the image (hit), or the build that makes it."""
        response = await self._send(
            "POST",
            self._calls.ws("/resolve"),
            json=_Calls.body(request),
            params=_Calls.resolve_params(wait, build, force_rebuild),
        )
        return _Calls.resolved(response)

    async def build(self, build_id: str, *, wait: float = 0) -> BuildView:
        """A build's status (waiting on the server up to `wait` seconds for its end)."""
        response = await self._send(
            "GET", self._calls.ws(f"/builds/{build_id}"), params={"wait": wait}
        )
        check(response)
        return BuildView.model_validate_json(response.content)

    async def environment(self, key: str) -> dict[str, Any]:
        """The metadata stored with an environment's image."""
        response = await self._send("GET", self._calls.ws(f"/environments/{key}"))
        check(response)
        result: dict[str, Any] = response.json()
        return result

    async def logs(
        self, build_id: str, *, after: int = 0, follow: bool = True, deadline: float | None = None
    ) -> AsyncIterator[LogItem]:
        """The build's log lines, live, then its final view; resumed after a drop."""
        stream = _Stream(after, deadline)
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    self._calls.ws(f"/builds/{build_id}/logs"),
                    headers=stream.headers(),
                    params={"follow": str(follow).lower()},
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()  # an error's body, before it is read
                    check(source.response)
                    async for sse in source.aiter_sse():
                        item = _Calls.event(sse)
                        if item is not None:
                            yield item
                            if stream.seen(item):
                                return
            except (httpx.TransportError, ServiceUnavailable):
                pass
            await asyncio.sleep(stream.retry_in())  # backoff before reconnecting

    async def resolve_image(
        self,
        request: ResolveRequest,
        *,
        on_log: OnLog | None = None,
        timeout: float = 3600.0,
        force_rebuild: bool = False,
    ) -> ImageView:
        """The environment's image, built if need be (see `EnvctlClient.resolve_image`)."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                answer = await self.resolve(request, force_rebuild=force_rebuild)
                break
            except (httpx.TransportError, ServiceUnavailable, QueueFull) as exc:
                await asyncio.sleep(_retry_in(exc, attempt, deadline))  # backoff
                attempt += 1
        if isinstance(answer, ImageView):
            return answer
        end = None
        async for item in self.logs(answer.build_id, deadline=deadline):
            end = take(item, on_log) or end
        return outcome(end, answer)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"envctl server {self._http.base_url}: {exc}") from exc
