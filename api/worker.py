"""The small HTTP face of `envctl worker`: probes and metrics, no API.

    GET /healthz   the process is up, and how many builds it runs
    GET /readyz    the database and the engine answer (503 naming what does not)
    GET /metrics   Prometheus: builds by outcome, build duration, queue length

Builds are counted where they run, so with `envctl worker`s the build metrics are theirs to
scrape; the API servers count requests and hits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from service.compose import Core
from service.service import run_blocking

log = logging.getLogger("envctl.worker")


def create_worker_app(core: Core) -> FastAPI:
    """The probes and metrics of a worker process whose workers start and stop with the app."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        start_workers(core)
        try:
            yield
        finally:
            core.workers.stop()
            core.close()

    app = FastAPI(title="envctl worker", version="1", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str | int]:
        """The process is up."""
        return {"status": "ok", "running": core.workers.running}

    @app.get("/readyz", responses={503: {"model": dict[str, str]}})
    async def readyz() -> JSONResponse:
        """The database and the engine answer."""
        checks = await run_blocking(core.readiness)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(checks, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        body = await run_blocking(core.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def start_workers(core: Core) -> None:
    """Log what the settings leave open, then start the build threads and the lease keeper."""
    for line in core.settings.exposures():
        log.warning("exposure: %s", line)
    log.info("envctl worker %s: %d build threads", core.workers.owner.rpartition(":")[2],
             core.limits.workers)  # fmt: skip
    core.workers.start()
