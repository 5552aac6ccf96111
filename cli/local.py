"""The embedded envctl: the client's calls answered by an `EnvironmentService` in this process.

`envctl` without `ENVCTL_URL` uses this instead of `EnvctlClient`; the commands cannot tell the
two apart. The service is the same one `envctl serve` runs, on the same kind of database
(SQLite in ENVCTL_HOME by default), so builds, logs and the one-build-per-key rule are shared
with every other envctl process and server on that database. The one difference: this process
runs only the builds it waits for (in a thread of its own, while it follows the log), never the
queue of others, because it exits as soon as it has its answer. A build it waits for that goes
back to the queue (the process running it died) is run here too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from client.errors import NotFound
from client.http import OnLog, image_after
from client.models import BuildView, HashView, ImageView, LogEventView
from hashing import canonical_inputs, compute_key
from service.compose import environment_service
from service.records import BuildRecord, LogLine, Workspace
from service.settings import ServiceLimits, Settings
from service.views import build_view
from specio.request import ResolveRequest


class LocalEnvironments:
    """`EnvctlClient`'s calls, in-process, for the workspace the settings configure."""

    def __init__(self, settings: Settings, *, workspace: Workspace | None = None) -> None:
        self.settings = settings
        self.workspace = settings.workspace if workspace is None else workspace.name
        registry = settings.workspace_registry or settings.embedded_registry
        own = workspace or Workspace(self.workspace, registry, created_at=datetime.now(UTC))
        self._service = environment_service(
            settings,
            limits=ServiceLimits(
                workers=0,
                max_running=1 << 16,
                max_queued=1 << 16,
                lease_seconds=settings.lease_seconds,
            ),
            workspaces={own.name: own},
            policed=False,
        )
        self._service.start()
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, threading.Thread] = {}  # the last run started here, by build

    def __enter__(self) -> LocalEnvironments:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish the builds this process started, then close everything."""
        for thread in self._threads:
            thread.join()
        self._service.stop()
        self._service.close()
        self._service.store.close()

    def hash(self, request: ResolveRequest) -> HashView:
        """The key of a spec, with its canonical inputs."""
        spec = self._service.spec(request, self.workspace)
        return HashView(key=compute_key(spec), pinned=spec.pinned, inputs=canonical_inputs(spec))

    def resolve(
        self,
        request: ResolveRequest,
        *,
        wait: float = 0,
        build: bool = True,
        force_rebuild: bool = False,
    ) -> ImageView | BuildView:
        """One resolve call: the image (hit), or the build that makes it (started here)."""
        resolved = self._service.resolve(
            self.workspace, request, build=build, force_rebuild=force_rebuild
        )
        if resolved.hit is not None:
            return ImageView.model_validate(resolved.hit.as_json())
        if resolved.build is None:
            raise NotFound(f"no image for {resolved.key} in any registry")
        record = self._wait(resolved.build, wait)
        view = build_view(record, self._service.position(record))
        return view.image_view() if record.status == "succeeded" else view

    def build(self, build_id: str, *, wait: float = 0) -> BuildView:
        """A build's status (waiting up to `wait` seconds for its end)."""
        record = self._wait(self._service.build(self.workspace, build_id), wait)
        return build_view(record, self._service.position(record))

    def _wait(self, record: BuildRecord, wait: float) -> BuildRecord:
        """The build after up to `wait` seconds, run here whenever it is queued."""
        deadline = time.monotonic() + wait
        while True:
            self._run_if_queued(record)
            remaining = deadline - time.monotonic()
            if record.done or remaining <= 0:
                return record
            poll = min(remaining, self._service.limits.poll_seconds)
            record = self._service.wait(self.workspace, record.id, poll)

    def _run_if_queued(self, record: BuildRecord) -> None:
        """Run a queued build this process waits for in a thread of its own: nobody else may
        (no server, or the embedded process that started it died). Claiming is atomic: of the
        waiters that try, one runs it."""
        running = self._runs.get(record.id)
        if record.status != "queued" or (running is not None and running.is_alive()):
            return
        thread = threading.Thread(
            target=self._service.workers.run_queued, args=(record.id,), name=f"build-{record.id}"
        )
        thread.start()
        self._threads.append(thread)
        self._runs[record.id] = thread

    def environment(self, key: str) -> dict[str, Any]:
        """The metadata stored with an environment's image."""
        return self._service.metadata(self.workspace, key).as_json()

    def logs(
        self, build_id: str, *, after: int = 0, follow: bool = True, deadline: float | None = None
    ) -> Iterator[LogEventView | BuildView]:
        """The build's log lines (live while it runs, with `follow`, until `deadline`), then
        its view."""
        service, hub = self._service, self._service.hub
        while True:
            lines = hub.lines_after(build_id, after)
            if lines is None:
                lines = service.store.read_log(build_id, after)
            yield from (_view(line) for line in lines)
            after = lines[-1].seq if lines else after
            record = service.build(self.workspace, build_id)
            self._run_if_queued(record)
            if record.done:
                yield from (_view(line) for line in service.store.read_log(build_id, after))
                yield build_view(record)
                return
            if not follow or (deadline is not None and time.monotonic() > deadline):
                yield build_view(record, service.position(record))
                return
            if not lines:
                hub.wait_change(build_id, after, service.limits.poll_seconds)

    def resolve_image(
        self,
        request: ResolveRequest,
        *,
        on_log: OnLog | None = None,
        timeout: float = 3600.0,
        force_rebuild: bool = False,
    ) -> ImageView:
        """The environment's image, built here if need be, following the build's log."""
        answer = self.resolve(request, force_rebuild=force_rebuild)
        if isinstance(answer, ImageView):
            return answer
        deadline = time.monotonic() + timeout
        return image_after(self.logs(answer.build_id, deadline=deadline), on_log, answer)


def _view(line: LogLine) -> LogEventView:
    return LogEventView(seq=line.seq, stage=line.stage, text=line.text, at=line.at)
