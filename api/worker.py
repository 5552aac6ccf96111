"""The small HTTP face of `envctl worker`: probes and metrics, no API.

    GET /healthz   the process is up, and how many builds it runs
    GET /readyz    the database and the engine answer (503 naming what does not)
    GET /metrics   Prometheus: builds by outcome, build duration, queue length

Builds are counted where they run, so with `envctl worker`s the build metrics are theirs to
scrape; the API servers count requests and hits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from service.compose import Core
from service.service import run_blocking
from service.workers import Workers

log = logging.getLogger("envctl.worker")


def create_worker_app(
    core: Core, *, exit_when_idle: float | None = None, stop: Callable[[], None] | None = None
) -> FastAPI:
    """The probes and metrics of a worker process whose workers start and stop with the app
    (see `start_workers`)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        start_workers(core, exit_when_idle=exit_when_idle, stop=stop)
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


def start_workers(
    core: Core, *, exit_when_idle: float | None = None, stop: Callable[[], None] | None = None
) -> None:
    """Log what the settings leave open, then start the build threads and the lease keeper;
    with `exit_when_idle`, call `stop` (which ends the process as SIGTERM would, but exits 0)
    once no build ran here for that many seconds: a batch of workers ends with the queue."""
    for line in core.settings.exposures():
        log.warning("exposure: %s", line)
    log.info("envctl worker %s: %d build threads", core.workers.owner.rpartition(":")[2],
             core.limits.workers)  # fmt: skip
    core.workers.start()
    if exit_when_idle is not None and stop is not None:
        threading.Thread(
            target=_exit_when_idle, args=(core.workers, exit_when_idle, stop), daemon=True
        ).start()


def _exit_when_idle(workers: Workers, seconds: float, stop: Callable[[], None]) -> None:
    while workers.idle_seconds < seconds:
        time.sleep(min(1.0, seconds / 4))  # polling the idle time, not synchronisation
    log.info("no build for %g s: exiting", seconds)
    stop()
