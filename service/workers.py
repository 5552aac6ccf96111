"""The builds this process runs: worker threads that claim queued builds from the database and
run them, and a lease keeper that renews this process's leases and puts back in the queue the
builds of processes that died.

Workers need only the database, the workspaces' resolvers and the spec reader, never the
HTTP service: `envctl worker` runs them alone, `envctl serve` beside the API (or none), the
embedded CLI with no thread of their own (`run_queued`). `service.compose` wires them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from builder.errors import disk_error
from hashing import (
    EnvctlError,
    EnvironmentSpec,
    compute_key,
    parse_image,
)
from hashing.errors import Kind
from service.errors import kind_of
from service.loghub import LogHub
from service.metrics import ServiceMetrics
from service.records import BuildRecord, LogLine
from service.settings import ServiceLimits
from service.specs import SpecReader
from service.store import BuildStore
from service.tenants import Tenants
from specio.received import remove_context, restored_request

log = logging.getLogger("envctl.service")


def new_owner() -> str:
    """This process's name on the builds it runs: `host:pid:id` (the id alone is shown)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Workers:
    """`limits.workers` threads claiming builds, and one keeping leases."""

    def __init__(
        self,
        store: BuildStore,
        tenants: Tenants,
        specs: SpecReader,
        *,
        limits: ServiceLimits,
        home: Path,
        hub: LogHub,
        metrics: ServiceMetrics,
        owner: str | None = None,
    ) -> None:
        """Builds run with `tenants`' resolvers, from specs read by `specs`, their contexts
        written under `home`/builds; their logs go to the database and `hub`."""
        self.store = store
        self.tenants = tenants
        self.specs = specs
        self.limits = limits
        self.home = home
        self.hub = hub
        self.metrics = metrics
        self.owner = owner or new_owner()
        self._wakeup = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, BuildRecord] = {}  # builds this process runs, by id
        self._busy_at = time.monotonic()  # when a build last ran here (or the workers began)

    def start(self) -> None:
        """Recover builds whose process died, then start the workers and the lease keeper."""
        self._recover()
        for n in range(self.limits.workers):
            self._spawn(self._work, f"envctl-worker-{n}")
        self._spawn(self._keep_leases, "envctl-leases")

    def stop(self) -> None:
        """Stop claiming; builds still running here go back to the queue."""
        self._stopping.set()
        self.notify(every=True)
        for record in list(self._running.values()):
            self.store.requeue(record.id, self.owner)

    def notify(self, *, every: bool = False) -> None:
        """A build was queued: wake a worker (or all of them) to claim it."""
        with self._wakeup:
            if every:
                self._wakeup.notify_all()
            else:
                self._wakeup.notify()

    def run_queued(self, build_id: str) -> None:
        """Run one queued build in this thread, if it is still queued (else someone runs it)."""
        record = self.store.claim(build_id, self.owner, lease_seconds=self.limits.lease_seconds)
        if record is not None:
            self._run(record)

    @property
    def running(self) -> int:
        """How many builds this process runs now."""
        return len(self._running)

    @property
    def idle_seconds(self) -> float:
        """How long this process has run no build (0 while one runs)."""
        return 0.0 if self._running else time.monotonic() - self._busy_at

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                record = self.store.claim_next(
                    self.owner,
                    lease_seconds=self.limits.lease_seconds,
                    max_running=self.limits.max_running,
                )
            except Exception as exc:  # the database is away: this worker must outlive it
                _trouble("claiming a build", exc)
                self._stopping.wait(self.limits.poll_seconds)
                continue
            if record is not None and self._stopping.is_set():
                self.store.requeue(record.id, self.owner)  # claimed as stop() ran: not ours now
                return
            if record is None:
                with self._wakeup:
                    self._wakeup.wait(self.limits.poll_seconds)
                continue
            self._run(record)

    def _run(self, record: BuildRecord) -> None:
        self._running[record.id] = record
        self.hub.start(record.id)
        started = time.monotonic()
        plan = record.request
        # a re-run of a build whose process died gets folders and tags of its own
        build_id = record.id if record.attempts <= 1 else f"{record.id}-{record.attempts}"
        context_dir = self.home / "builds" / f"{build_id}.context"
        try:
            on_event = functools.partial(self._log, record.id)
            on_event("queue", f"build {record.id} of {record.key} started by {_who(self.owner)}")
            try:
                spec = self._planned_spec(record, context_dir)
                ref = self.tenants.get(record.workspace).resolver.resolve(
                    spec,
                    force_rebuild=bool(plan.get("force_rebuild")),
                    on_event=on_event,
                    build_id=build_id,
                )
            finally:  # before the outcome is recorded: whoever sees it finds no context left
                remove_context(context_dir)
            assert ref is not None  # resolve with build=True finds or builds
            self.store.finish(
                record.id,
                self.owner,
                "succeeded",
                image=ref.image,
                digest=ref.digest,
                source=ref.source,
            )
            self.metrics.builds.labels("succeeded").inc()
        except EnvctlError as exc:
            self._failed(record, exc)
        except SQLAlchemyError as exc:
            if kind_of(exc) is Kind.UNAVAILABLE:
                # the database went away under the build (its log, its outcome): nothing can
                # be recorded, and nothing should be, since the build itself did not fail. Its
                # lease runs out and whoever sees that, this process included, queues it
                # again; the next run finds the image if this one pushed it.
                log.warning("build %s: the database failed under it (%s); it will run again",
                            record.id, exc)  # fmt: skip
            else:  # not an outage: a bug, recorded as one
                log.exception("build %s crashed", record.id)
                self._failed(record, exc)
        except OSError as exc:
            self._failed(record, disk_error(exc))
        except Exception as exc:  # a bug must not kill the worker or leave the build running
            log.exception("build %s crashed", record.id)
            self._failed(record, exc)
        finally:
            self.metrics.build_seconds.observe(time.monotonic() - started)
            self._running.pop(record.id, None)
            self._busy_at = time.monotonic()
            self.hub.finish(record.id)
            self._sweep_files()

    def _planned_spec(self, record: BuildRecord, context_dir: Path) -> EnvironmentSpec:
        """The spec a queued build was planned with: its request (its context written to
        `context_dir`), on the base image as pinned when it was queued (a tag moved since
        then is another key)."""
        plan = record.request
        try:
            request = restored_request(plan["request"], self.store.build_files(record.id))
        except KeyError:  # only a bug, or a hand-edited database, can take a file away
            raise EnvctlError("the build's request files are gone; resolve again") from None
        spec = self.specs.read(request, context_dir=context_dir)
        # the images as resolve() pinned them, in the order of `images()`
        images = plan.get("images") or [plan["base_image"]]
        if len(images) != len(spec.images()):
            raise EnvctlError("the build's spec no longer names the images it was queued with")
        pinned = dict(zip(spec.images(), images, strict=True))
        spec = spec.with_images(lambda image: parse_image(pinned[image]))
        if compute_key(spec) != record.key:
            raise EnvctlError(
                "the server's package sources changed since this build was queued; resolve again"
            )
        return spec

    def _failed(self, record: BuildRecord, exc: Exception) -> None:
        message = str(exc)  # with the log's tail, for whoever only reads the outcome
        try:
            self._log(record.id, "error", getattr(exc, "message", None) or message)
            self.store.finish(
                record.id, self.owner, "failed", failure_class=type(exc).__name__, message=message
            )
        except Exception:  # the database is away: the lease runs out and the build runs again
            log.exception("build %s: recording its failure failed", record.id)
        self.metrics.builds.labels("failed").inc()

    def _log(self, build_id: str, stage: str, text: str) -> None:
        at = datetime.now(UTC)
        seq = self.store.append_log(build_id, [(stage, text)], at=at)
        self.hub.publish(build_id, LogLine(seq, stage, text, at))

    def _keep_leases(self) -> None:
        lease = self.limits.lease_seconds
        while not self._stopping.wait(lease / 3):
            try:
                for build_id in list(self._running):
                    if not self.store.renew(build_id, self.owner, lease_seconds=lease):
                        log.warning("build %s: lease lost; another process may run it", build_id)
                if self._recover():
                    self.notify(every=True)
                self._sweep_files()
            except Exception as exc:  # the database is away: keep renewing once it is back
                _trouble("renewing leases", exc)

    def _recover(self) -> int:
        """Put back in the queue the running builds nobody runs any more: those whose process
        is gone, and those whose lease ran out, this process's own included (a build whose
        outcome could not be recorded, say while the database was away, is still `running`
        in the database but no longer here); how many."""
        now = datetime.now(UTC)
        host = socket.gethostname()
        requeued = 0
        for record in self.store.running():
            if record.id in self._running:
                continue  # running here: its lease is renewed
            expired = record.lease_until is None or record.lease_until < now
            dead = record.owner != self.owner and dead_here(record.owner, host)
            # a lease that only looked expired may have been renewed since: requeue it only if
            # it still is; a dead process's build is requeued at once
            if (expired or dead) and self.store.requeue(
                record.id, record.owner, expired_only=not dead
            ):
                who = _who(record.owner)
                why = f"{who} is gone" if dead else f"the lease of {who} ran out"
                self._log(record.id, "queue", f"{why}: build queued again")
                requeued += 1
        return requeued

    def _sweep_files(self) -> None:
        """Delete the request files no active build needs (best effort: the next sweep will)."""
        try:
            self.store.sweep_files(unused_for=self.limits.files_kept_seconds)
        except SQLAlchemyError as exc:
            log.warning("sweeping request files failed (%s); trying again later", exc)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)


def _trouble(doing: str, exc: Exception) -> None:
    """Log a failure of the worker's own loop: an outage in one line (it is expected, and the
    loop rides it out), anything else with its traceback (a bug)."""
    if kind_of(exc) is Kind.UNAVAILABLE:
        log.warning("%s failed: the database is unavailable (%s); trying again", doing,
                    type(exc).__name__)  # fmt: skip
    else:
        log.exception("%s failed; trying again", doing)


def _who(owner: str | None) -> str:
    """A build's process as a workspace's log may name it: `worker 1a2b3c4d`, never the
    host's name or the process id (`host:pid:id` is the owner's record)."""
    return f"worker {(owner or '').rpartition(':')[2] or 'unknown'}"


def dead_here(owner: str | None, host: str) -> bool:
    """True when `owner` is a process of this host that no longer exists."""
    if owner is None:
        return True
    parts = owner.split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
