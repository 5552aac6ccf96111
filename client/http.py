"""The Python client of the envctl API (httpx), sync and async; the CLI and runners use it.

    with EnvctlClient(["http://a:8080", "http://b:8080"], token, workspace="team-a") as envctl:
        image = envctl.resolve_image(request_from_file("env.yml"), on_log=print)
        run(image.image)

`resolve_image` is the runner's one call: a hit answers at once; on a miss it follows the build's
log until the build is over and returns the image or raises the build's failure (`BuildFailed`).

A client takes one address or several of one service (`client.servers`): each call asks them in
order from the last that answered, moves on at once when one cannot be reached, and raises
ServiceUnavailable, naming each address, once none has answered for `unreachable_after` seconds.
A build outlives the server that was asked: a client following its log (or polling it with
`build(id, wait=...)`) whose server goes away goes on through another with the same build id
(builds live in the service's database), resuming the log after the last line it had.

`_BaseClient` holds what both clients share (the addresses, each request's parts, reading the
answers); `EnvctlClient` and `AsyncEnvctlClient` only do the I/O, as httpx's own clients do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse

from client.answers import (
    LogItem,
    OnLog,
    check,
    event,
    failure,
    image_after,
    outcome,
    resolved,
    take,
)
from client.errors import QueueFull
from client.models import BuildView, HashView, ImageView
from client.servers import UNREACHABLE_AFTER, Servers, Walk, server_urls
from specio.request import ResolveRequest

__all__ = [
    "UNREACHABLE_AFTER",
    "AsyncEnvctlClient",
    "EnvctlClient",
    "LogItem",
    "OnLog",
    "check",
    "failure",
    "image_after",
]

POLL = 30.0  # seconds a log stream may be silent (the server pings every 15 s)


@dataclass(frozen=True)
class _Call:
    """One request as both clients send it, to whichever address the walk gives."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    wait: float = 0  # seconds the server may hold the answer (`?wait=`)


class _Place:
    """Where a log stream is (its last line), for resuming it with Last-Event-ID."""

    def __init__(self, after: int) -> None:
        self.after = after

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.after)} if self.after else {}

    def seen(self, item: LogItem) -> bool:
        """Note an item; True at the stream's end."""
        if isinstance(item, BuildView):
            return True
        self.after = item.seq
        return False


class _BaseClient:
    """What both clients share: the service's addresses, the requests, reading the answers."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None,
        *,
        workspace: str,
        timeout: float,
        unreachable_after: float,
    ) -> None:
        self.servers = Servers(server_urls(urls, "url"), unreachable_after=unreachable_after)
        self.workspace = workspace
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout

    def _ws(self, path: str) -> str:
        return f"/v1/workspaces/{self.workspace}{path}"

    def _hash_call(self, request: ResolveRequest) -> _Call:
        return _Call("POST", "/v1/hash", json=_body(request))

    def _resolve_call(
        self, request: ResolveRequest, wait: float, build: bool, force_rebuild: bool
    ) -> _Call:
        params = {
            "wait": wait,
            "build": str(build).lower(),
            "force_rebuild": str(force_rebuild).lower(),
        }
        return _Call("POST", self._ws("/resolve"), params, _body(request), wait=wait)

    def _build_call(self, build_id: str, wait: float) -> _Call:
        return _Call("GET", self._ws(f"/builds/{build_id}"), {"wait": wait}, wait=wait)

    def _environment_call(self, key: str) -> _Call:
        return _Call("GET", self._ws(f"/environments/{key}"))

    def _logs_call(self, build_id: str, follow: bool, place: _Place) -> _Call:
        params = {"follow": str(follow).lower()}
        return _Call("GET", self._ws(f"/builds/{build_id}/logs"), params, headers=place.headers())

    def _timeouts(self, walk: Walk, call: _Call) -> httpx.Timeout:
        """An attempt's timeouts: connecting bounded by the walk (an address that does not
        answer must not use up the time the others have), reading by what the server holds."""
        read = max(POLL, call.wait) + self._timeout
        return httpx.Timeout(self._timeout, connect=walk.connect_timeout(), read=read)


def _body(request: ResolveRequest) -> dict[str, Any]:
    return request.model_dump(mode="json", exclude_defaults=True)


def _environment(response: httpx.Response) -> dict[str, Any]:
    check(response)
    result: dict[str, Any] = response.json()
    return result


def _queue_wait(exc: QueueFull, deadline: float) -> float:
    """Seconds to wait before asking again after a full queue (the server says how long);
    `exc` again when that would pass the deadline."""
    if time.monotonic() + exc.retry_after > deadline:
        raise exc
    return float(exc.retry_after)


class EnvctlClient(_BaseClient):
    """Synchronous client of one workspace of an envctl service. `urls`: one address, several
    (a sequence, or comma-separated as in ENVCTL_URL) of servers sharing one database;
    `unreachable_after`: seconds with none answering before a call raises ServiceUnavailable."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None,
        *,
        workspace: str,
        timeout: float = 30.0,
        unreachable_after: float = UNREACHABLE_AFTER,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            urls, token, workspace=workspace, timeout=timeout, unreachable_after=unreachable_after
        )
        self._http = httpx.Client(headers=self._headers, transport=transport)

    def __enter__(self) -> EnvctlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def hash(self, request: ResolveRequest) -> HashView:
        """The key the server computes for a spec, with its canonical inputs."""
        response = self._send(self._hash_call(request))
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
        """One resolve call: the image (hit), or the build that makes it. Safe to send again
        to another server: a resolve joins the key's active build (`client.servers`)."""
        return resolved(self._send(self._resolve_call(request, wait, build, force_rebuild)))

    def build(self, build_id: str, *, wait: float = 0) -> BuildView:
        """A build's status (waiting on the server up to `wait` seconds for its end)."""
        response = self._send(self._build_call(build_id, wait))
        check(response)
        return BuildView.model_validate_json(response.content)

    def environment(self, key: str) -> dict[str, Any]:
        """The metadata stored with an environment's image."""
        return _environment(self._send(self._environment_call(key)))

    def logs(
        self, build_id: str, *, after: int = 0, follow: bool = True, deadline: float | None = None
    ) -> Iterator[LogItem]:
        """The build's log lines, live, then its final view. A dropped stream is resumed
        from the last line seen (Last-Event-ID), through another address if its server went
        away; ServiceUnavailable once none answers for `unreachable_after` seconds, or at
        `deadline` (time.monotonic)."""
        place = _Place(after)
        walk = self.servers.walk(deadline=deadline)
        while True:
            url, pause = walk.next()
            if pause:
                time.sleep(pause)  # backoff between rounds of addresses, not synchronisation
            call = self._logs_call(build_id, follow, place)
            try:
                with connect_sse(
                    self._http, call.method, url + call.path, params=call.params,
                    headers=call.headers, timeout=self._timeouts(walk, call),
                ) as source:  # fmt: skip
                    if not source.response.is_success:
                        source.response.read()  # an error's body, before it is read as one
                    if not walk.answer(url, source.response):
                        continue
                    check(source.response)
                    for sse in source.iter_sse():
                        item = event(sse)
                        if item is not None:
                            yield item
                            if place.seen(item):
                                return
            except httpx.TransportError as exc:
                walk.failed(url, exc)
                continue
            walk.failed(url, "the log stream ended before the build did")

    def resolve_image(
        self,
        request: ResolveRequest,
        *,
        on_log: OnLog | None = None,
        timeout: float = 3600.0,
        force_rebuild: bool = False,
    ) -> ImageView:
        """The environment's image, built if need be: follows the build's log (to `on_log`)
        and raises BuildFailed when it fails. A server going away is waited out through the
        other addresses, or until one answers again within `unreachable_after` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                call = self._resolve_call(request, 0, True, force_rebuild)
                answer = resolved(self._send(call, deadline))
                break
            except QueueFull as exc:
                time.sleep(_queue_wait(exc, deadline))  # as the server said, not synchronisation
        if isinstance(answer, ImageView):
            return answer
        return image_after(self.logs(answer.build_id, deadline=deadline), on_log, answer)

    def _send(self, call: _Call, deadline: float | None = None) -> httpx.Response:
        """`call`'s answer from the first address that gives one (see `client.servers`)."""
        walk = self.servers.walk(deadline=deadline)
        while True:
            url, pause = walk.next()
            if pause:
                time.sleep(pause)  # backoff between rounds of addresses, not synchronisation
            try:
                response = self._http.request(
                    call.method, url + call.path, params=call.params, json=call.json,
                    headers=call.headers, timeout=self._timeouts(walk, call),
                )  # fmt: skip
            except httpx.TransportError as exc:
                walk.failed(url, exc)
                continue
            if walk.answer(url, response):
                return response


class AsyncEnvctlClient(_BaseClient):
    """Asynchronous client of one workspace of an envctl service (same calls, awaited)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None,
        *,
        workspace: str,
        timeout: float = 30.0,
        unreachable_after: float = UNREACHABLE_AFTER,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            urls, token, workspace=workspace, timeout=timeout, unreachable_after=unreachable_after
        )
        self._http = httpx.AsyncClient(headers=self._headers, transport=transport)

    async def __aenter__(self) -> AsyncEnvctlClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def hash(self, request: ResolveRequest) -> HashView:
        """The key the server computes for a spec, with its canonical inputs."""
        response = await self._send(self._hash_call(request))
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
        return resolved(await self._send(self._resolve_call(request, wait, build, force_rebuild)))

    async def build(self, build_id: str, *, wait: float = 0) -> BuildView:
        """A build's status (waiting on the server up to `wait` seconds for its end)."""
        response = await self._send(self._build_call(build_id, wait))
        check(response)
        return BuildView.model_validate_json(response.content)

    async def environment(self, key: str) -> dict[str, Any]:
        """The metadata stored with an environment's image."""
        return _environment(await self._send(self._environment_call(key)))

    async def logs(
        self, build_id: str, *, after: int = 0, follow: bool = True, deadline: float | None = None
    ) -> AsyncIterator[LogItem]:
        """The build's log lines, live, then its final view (see `EnvctlClient.logs`)."""
        place = _Place(after)
        walk = self.servers.walk(deadline=deadline)
        while True:
            url, pause = walk.next()
            if pause:
                await asyncio.sleep(pause)  # backoff between rounds of addresses
            call = self._logs_call(build_id, follow, place)
            try:
                async with aconnect_sse(
                    self._http, call.method, url + call.path, params=call.params,
                    headers=call.headers, timeout=self._timeouts(walk, call),
                ) as source:  # fmt: skip
                    if not source.response.is_success:
                        await source.response.aread()  # an error's body, before it is read
                    if not walk.answer(url, source.response):
                        continue
                    check(source.response)
                    async for sse in source.aiter_sse():
                        item = event(sse)
                        if item is not None:
                            yield item
                            if place.seen(item):
                                return
            except httpx.TransportError as exc:
                walk.failed(url, exc)
                continue
            walk.failed(url, "the log stream ended before the build did")

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
        while True:
            try:
                call = self._resolve_call(request, 0, True, force_rebuild)
                answer = resolved(await self._send(call, deadline))
                break
            except QueueFull as exc:
                await asyncio.sleep(_queue_wait(exc, deadline))  # as the server said
        if isinstance(answer, ImageView):
            return answer
        end = None
        async for item in self.logs(answer.build_id, deadline=deadline):
            end = take(item, on_log) or end
        return outcome(end, answer)

    async def _send(self, call: _Call, deadline: float | None = None) -> httpx.Response:
        """`call`'s answer from the first address that gives one (see `client.servers`)."""
        walk = self.servers.walk(deadline=deadline)
        while True:
            url, pause = walk.next()
            if pause:
                await asyncio.sleep(pause)  # backoff between rounds of addresses
            try:
                response = await self._http.request(
                    call.method, url + call.path, params=call.params, json=call.json,
                    headers=call.headers, timeout=self._timeouts(walk, call),
                )  # fmt: skip
            except httpx.TransportError as exc:
                walk.failed(url, exc)
                continue
            if walk.answer(url, response):
                return response
