"""The HTTP API (FastAPI), versioned under /v1: `create_app(settings)` builds it.

    POST /v1/workspaces/{ws}/resolve            200 ImageView (hit) · 202 BuildView (miss)
    GET  /v1/workspaces/{ws}/builds/{id}        BuildView (?wait=S holds until it is over)
    GET  /v1/workspaces/{ws}/builds/{id}/logs   Server-Sent Events; resumable (Last-Event-ID)
    GET  /v1/workspaces/{ws}/environments/{key} the stored metadata
    POST /v1/hash                               HashView
    GET  /healthz · /readyz · /metrics

Every route but the last three needs a bearer token; a token reaches its own workspace only
(an admin token reaches all, and `_global`: the global registry). Another workspace's build
is answered 404, exactly as a build that does not exist. Errors: `service.errors.http_status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.tokens import TokenCache
from client.errors import BodyTooLarge, NotFound, QueueFull, Unauthorized
from client.models import BuildView, ErrorView, HashView, ImageView, LogEventView
from hashing import EnvctlError, SpecError, canonical_inputs, compute_key
from hashing.errors import Kind
from service.compose import environment_service
from service.errors import http_status, kind_of, public_message
from service.metrics import ServiceMetrics
from service.records import GLOBAL_WORKSPACE, BuildRecord, LogLine, Token
from service.service import EnvironmentService, run_blocking
from service.settings import Settings
from service.views import build_view
from specio.request import ResolveRequest

log = logging.getLogger("envctl.api")

BODY_LIMIT = 64 << 20  # bytes: a spec with its whole build context, base64
MAX_WAIT = 3600.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorView} for status in (400, 401, 404, 413, 422, 429, 503)
}


async def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Token:
    """The token a request carries; Unauthorized when there is none or it is not live."""
    tokens: TokenCache = request.app.state.tokens
    svc: EnvironmentService = request.app.state.service
    token = await tokens.check(_bearer(authorization), svc.store.authenticate)
    if token is None:
        raise Unauthorized("unknown or revoked token")
    return token


def _bearer(authorization: str | None) -> str:
    """The secret of an `Authorization: Bearer SECRET` header; Unauthorized without one."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer TOKEN)")
    return secret.strip()


CallerToken = Annotated[Token, Depends(_caller)]
WorkspaceName = Annotated[str, Path(min_length=1, max_length=64)]


def create_app(
    settings: Settings,
    *,
    service: EnvironmentService | None = None,
    body_limit: int = BODY_LIMIT,
) -> FastAPI:
    """The API over `service` (by default one on `settings.database`), started and stopped
    with the app."""
    if service is None:
        service = environment_service(settings)
    svc = service

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        svc.hub.bind(asyncio.get_running_loop())
        for line in settings.exposures():
            log.warning("exposure: %s", line)
        svc.start()
        try:
            yield
        finally:
            svc.stop()
            svc.close()
            svc.store.close()

    app = FastAPI(
        title="envctl",
        version="1",
        summary="Environment images built exactly once, keyed by their content.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.service = svc
    tokens = app.state.tokens = TokenCache(settings.token_ttl)
    app.add_middleware(_BodyLimit, limit=body_limit)
    _handle_errors(app)
    app.add_middleware(_CountRequests, metrics=svc.metrics)

    _probes(app, svc)
    _environment_routes(app, svc)
    _build_routes(app, svc, tokens)
    return app


def _reach(token: Token, workspace: str) -> None:
    """NotFound unless `token` reaches `workspace`: the same 404 as for a workspace that does
    not exist, so another's is never revealed."""
    if (workspace == GLOBAL_WORKSPACE and not token.admin) or not token.reaches(workspace):
        raise NotFound(f"no workspace {workspace!r}")


def _probes(app: FastAPI, svc: EnvironmentService) -> None:
    """/healthz, /readyz and /metrics: no token needed."""

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses={503: {"model": dict[str, str]}})
    async def readyz() -> JSONResponse:
        """The database, the engine and the registries answer."""
        checks = await run_blocking(svc.readiness)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(checks, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        body = await run_blocking(svc.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _environment_routes(app: FastAPI, svc: EnvironmentService) -> None:
    """Keys, resolves and what is stored with an image."""

    @app.post("/v1/hash", tags=["environments"])
    async def hash_spec(body: ResolveRequest, token: CallerToken) -> HashView:
        """The key of a spec, and the canonical inputs it is the hash of. A workspace token's
        spec must pass that workspace's source policy, as it would to resolve."""
        spec = await svc.blocking(token.workspace, svc.spec, body, token.workspace)
        return HashView(key=compute_key(spec), pinned=spec.pinned, inputs=canonical_inputs(spec))

    @app.post(
        "/v1/workspaces/{workspace}/resolve",
        tags=["environments"],
        status_code=200,
        response_model=ImageView,
        responses={202: {"model": BuildView}},
    )
    async def resolve(
        workspace: WorkspaceName,
        body: ResolveRequest,
        token: CallerToken,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0,
        build: bool = True,
        force_rebuild: bool = False,
    ) -> ImageView | BuildView | Response:
        """The environment's image (200), or the one build that makes it (202: queued or
        joined). `wait` holds the request up to that many seconds for the build to finish.
        Idempotent per key: a resolve sent again (to this server or another on the database,
        by a client whose server went away) joins the key's active build, never a second one;
        only with `force_rebuild`, sent again after that build finished, does it build again."""
        _reach(token, workspace)
        resolved = None if force_rebuild else svc.answer_from_memory(workspace, body)
        if resolved is None:  # it needs the registries or the database: off the loop
            resolved = await svc.blocking(
                workspace,
                lambda: svc.resolve(workspace, body, build=build, force_rebuild=force_rebuild),
            )
        if resolved.hit is not None:  # the hot path: the answer's bytes, without a model
            return Response(json.dumps(resolved.hit.as_json()), media_type="application/json")
        if resolved.build is None:
            raise NotFound(f"no image for {resolved.key} in any registry (build=false)")
        record = resolved.build
        if wait > 0:
            record = await svc.wait_async(workspace, record.id, wait)
        return await _build_answer(svc, record, accepted=True)

    @app.get("/v1/workspaces/{workspace}/environments/{key}", tags=["environments"])
    async def get_environment(
        workspace: WorkspaceName,
        key: Annotated[str, Path(pattern="^[0-9a-f]{32}$")],
        token: CallerToken,
    ) -> dict[str, Any]:
        """What is stored with an environment's image: spec, lock, Dockerfile, log, facts."""
        _reach(token, workspace)
        metadata = await svc.blocking(workspace, svc.metadata, workspace, key)
        return metadata.as_json()


def _build_routes(app: FastAPI, svc: EnvironmentService, tokens: TokenCache) -> None:
    """A build's status, and its log as a stream."""

    @app.get("/v1/workspaces/{workspace}/builds/{build_id}", tags=["builds"])
    async def get_build(
        workspace: WorkspaceName,
        build_id: str,
        token: CallerToken,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0,
    ) -> BuildView:
        """A build's status, timings and, once it succeeded, its image."""
        _reach(token, workspace)
        record = await svc.wait_async(workspace, build_id, wait)
        answer = await _build_answer(svc, record, accepted=False)
        assert isinstance(answer, BuildView)
        return answer

    @app.get(
        "/v1/workspaces/{workspace}/builds/{build_id}/logs",
        tags=["builds"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def get_logs(
        request: Request,
        workspace: WorkspaceName,
        build_id: str,
        token: CallerToken,
        last_event_id: Annotated[int, Header(ge=0, le=2**62)] = 0,
        follow: bool = True,
    ) -> EventSourceResponse:
        """The build's log as Server-Sent Events (`log`, then one `end` with the build),
        live while it runs (`follow=false`: the log so far, then `end` with the build as it
        is); send `Last-Event-ID` to resume after a dropped connection."""
        _reach(token, workspace)
        await run_blocking(svc.build, workspace, build_id)  # 404 now, not inside the stream
        secret = _bearer(request.headers.get("authorization"))  # _caller checked it

        async def allowed() -> bool:  # a revoked token ends its streams too
            try:
                return await tokens.check(secret, svc.store.authenticate) is not None
            except SQLAlchemyError:
                return True  # the database is away: the stream waits for it (follow does)

        stream = svc.follow(workspace, build_id, last_event_id, live=follow, allowed=allowed)
        return EventSourceResponse(_events(stream), ping=15)


async def _build_answer(
    svc: EnvironmentService, record: BuildRecord, *, accepted: bool
) -> BuildView | ImageView | JSONResponse:
    position = await run_blocking(svc.position, record)
    view = build_view(record, position)
    if not accepted:
        return view
    if record.status == "succeeded":
        return view.image_view()
    return JSONResponse(view.model_dump(mode="json"), status_code=202)


async def _events(stream: AsyncIterator[LogLine | BuildRecord]) -> AsyncIterator[ServerSentEvent]:
    async for item in stream:
        if isinstance(item, LogLine):
            data = LogEventView(seq=item.seq, stage=item.stage, text=item.text, at=item.at)
            yield ServerSentEvent(data=data.model_dump_json(), event="log", id=str(item.seq))
        else:
            yield ServerSentEvent(data=build_view(item).model_dump_json(), event="end")


def _error_response(exc: Exception) -> JSONResponse:
    """An error's answer, from its kind: status, code, kind, a message any caller may see and,
    for a spec, where."""
    status, code = http_status(exc)
    kind = kind_of(exc)
    if kind is Kind.UNAVAILABLE:  # the details (hosts, ports, paths) go to the log only
        log.warning("answering %d: %s", status, exc)
    elif status >= 500:
        log.error("request failed: %r", exc, exc_info=exc)
    kind = kind or Kind.FAILED
    body = ErrorView(error=code, kind=kind, message=public_message(exc))
    if isinstance(exc, SpecError):
        body = ErrorView(
            error=code,
            kind=kind,
            message=exc.message,
            source=exc.source,
            line=exc.line,
            field=exc.field,
        )
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status, headers=headers)


def _handle_errors(app: FastAPI) -> None:
    # on EnvctlError, not Exception: Starlette runs an Exception handler in its outermost
    # middleware, which answers and then re-raises, and the connection is closed
    @app.exception_handler(EnvctlError)
    @app.exception_handler(SQLAlchemyError)  # the database is away: 503, like a registry
    @app.exception_handler(OSError)  # a full disk: 503; any other, a bug: 500 without details
    async def envctl_error(_: Request, exc: Exception) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        found = exc.status_code == 404
        kind = Kind.NOT_FOUND if found else Kind.INVALID
        body = ErrorView(
            error="not_found" if found else "bad_request", kind=kind, message=str(exc.detail)
        )
        return JSONResponse(
            body.model_dump(mode="json", exclude_none=True), exc.status_code, exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        body = ErrorView(
            error="invalid_request",
            kind=Kind.INVALID,
            message=first.get("msg", "invalid request"),
            field=where,
        )
        return JSONResponse(body.model_dump(mode="json", exclude_none=True), 422)


class _CountRequests:
    """Counts requests by method, route and status (a plain ASGI middleware: Starlette's
    `BaseHTTPMiddleware` costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()


class _BodyLimit:
    """413 for a body over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit, send)
            return
        if length is not None or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)  # the server holds the body to its length
            return
        # read the whole body first (it is bounded), so that a chunked body over the limit is
        # answered 413 before the app sees any of it
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                await _too_large(self.limit, send)
                return
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], then=receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A `receive` that hands out `messages`, then defers to `then` (a disconnect, later)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _too_large(limit: int, send: Send) -> None:
    response = _error_response(BodyTooLarge(f"the request body is over {limit} bytes"))
    await response({"type": "http"}, _replay([]), send)
