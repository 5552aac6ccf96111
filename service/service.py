"""The service: resolve for many workspaces, one build per key, builds run by worker threads.

    resolve(ws, request) → spec (files by content) → base pinned → key
        → the workspace's registry, then the global one: hit → Resolved(hit)
        └ miss → the active build of (ws, key), or a new queued one → Resolved(build)
    workers: claim the oldest queued build (per-workspace limit) → Resolver → finish

The database (`BuildStore`) is the truth: a build is queued there before anyone is told about
it, claimed there by exactly one worker of one process, and its outcome and log are written
there, so that every process sharing the database can answer for every build. A process that
dies mid-build leaves a running record whose lease runs out (or whose process this host can
see is gone): any process then puts it back in the queue, and the next worker runs it again.

The HTTP app (`api.app`) and the embedded CLI both call this class; `service.compose` builds
it from settings, with the workers it runs (none on a server whose builds `envctl worker`s run).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from anyio import CapacityLimiter, to_thread
from sqlalchemy.exc import SQLAlchemyError

from builder.docker import DockerBuilder
from client.errors import NotFound, QueueFull
from hashing import EnvironmentSpec, EnvKey, compute_key
from hashing.errors import Kind
from hashing.stages import classic_builder_refusal
from registry import DigestResolver
from registry.base import ImageRef
from registry.metadata import EnvMetadata
from service.errors import kind_of
from service.loghub import LogHub
from service.metrics import ServiceMetrics
from service.policy import Prefix, SourcePolicy, shared_sources
from service.records import BuildRecord, LogLine
from service.settings import ServiceLimits, Settings
from service.specs import SPEC_MEMO, SpecReader, fingerprint
from service.store import BuildStore, QueueLimit
from service.tenants import Memo, Tenants
from service.workers import Workers
from specio.received import stored_request
from specio.request import ResolveRequest

log = logging.getLogger("envctl.service")
POLICY_TTL = 5.0  # seconds a workspace's source policy (the other workspaces) is trusted
WORKSPACE_THREADS = 4  # blocking calls (registries, tag resolution) of one workspace at once
OUTAGE_GRACE = 60.0  # seconds a waiting caller's database reads ride out an outage
RETRY_AFTER = 30  # seconds a client told "queue full" waits before asking again
T = TypeVar("T")


@dataclass(frozen=True)
class Resolved:
    """A resolve's answer: the image (a hit, or a finished build) or the build to wait for."""

    key: EnvKey
    hit: ImageRef | None = None
    build: BuildRecord | None = None


class EnvironmentService:
    """Resolve, builds, logs and metadata for every workspace in one database."""

    def __init__(
        self,
        settings: Settings,
        store: BuildStore,
        *,
        tenants: Tenants,
        specs: SpecReader,
        workers: Workers,
        engine: DockerBuilder,
        limits: ServiceLimits,
        hub: LogHub,
        metrics: ServiceMetrics,
        policed: bool = True,
    ) -> None:
        """The service over `store` and the workspaces `tenants` opens; `workers` run its
        builds here (none when `limits.workers` is 0: `envctl worker`s run them, or the
        embedded CLI's `run_queued`). `policed=False` trusts every spec (the embedded CLI:
        its user reads what the host's user may anyway); a server checks each workspace's
        specs against its source policy. `service.compose` builds one from settings."""
        self.settings = settings
        self.store = store
        self.policed = policed
        self.limits = limits
        self.hub = hub
        self.metrics = metrics
        self.engine = engine
        self.tenants = tenants
        self.specs = specs
        self.workers = workers
        self.digests = DigestResolver(
            insecure=settings.insecure_registries,
            timeout=settings.registry_timeout,
            ttl=settings.tag_ttl,
        )
        self._keys: Memo[tuple[str, EnvKey]] = Memo(SPEC_MEMO)  # (image digests, key)
        self._policies: dict[str, tuple[float, SourcePolicy]] = {}
        self._limiters: dict[str, CapacityLimiter] = {}  # made on the event loop, used there

    # lifecycle
    def start(self) -> None:
        """Recover builds whose process died, then start the workers and the lease keeper."""
        self.workers.start()

    def stop(self) -> None:
        """Stop taking work; builds still running here go back to the queue for the next
        process (their engine builds end with this process's connections)."""
        self.workers.stop()

    def close(self) -> None:
        """Close every connection (after `stop`)."""
        self.tenants.close()
        self.engine.close()
        self.digests.close()

    # the API
    def spec(self, request: ResolveRequest, workspace: str | None = None) -> EnvironmentSpec:
        """The request's spec with the operator's package sources and its base image pinned.
        With a workspace, a policed service checks the spec against its source policy before
        anything is fetched (SpecError otherwise), and the tag is pinned with the workspace's
        own pull credentials; without one (an admin's token) it is trusted and pinned
        anonymously."""
        spec = self.specs.read(request)
        if workspace is None:
            return spec.with_images(self.digests.resolve)
        if self.policed:
            self.policy(workspace).check(spec)
        tags = self.tenants.get(workspace).tags  # with the workspace's own credentials
        return spec.with_images(tags.resolve)

    def policy(self, workspace: str) -> SourcePolicy:
        """What `workspace`'s specs may name: its own namespace, the global registry, the
        default base image's repository and the operator's allowed registries, never another
        workspace's namespace (the list of workspaces is read again every few seconds)."""
        now = time.monotonic()
        cached = self._policies.get(workspace)
        if cached is not None and now - cached[0] < POLICY_TTL:
            return cached[1]
        s = self.settings
        own = self.tenants.workspace(workspace).registry
        # every other workspace's namespace, and the root they are made under (a namespace
        # there that is no workspace's now may be a deleted one's, or a future one's)
        others = [
            Prefix.parse(r)
            for r in [
                *(w.registry for w in self.store.list_workspaces() if w.name != workspace),
                s.workspace_registry or "oci:",
            ]
            if not r.startswith("oci:")
        ]
        policy = SourcePolicy(
            own=() if own.startswith("oci:") else (Prefix.parse(own),),
            allowed=shared_sources(s, self.specs.default_base),
            others=tuple(others),
            url_sources=s.allow_url_sources,
        )
        self._policies[workspace] = (now, policy)
        return policy

    def answer_from_memory(self, workspace: str, request: ResolveRequest) -> Resolved | None:
        """A hit answered from what this process already knows (the spec read before, the base
        tag's digest still trusted, the image confirmed): no I/O, so the event loop may call
        it. None when anything would have to be asked."""
        tenant = self.tenants.opened(workspace)
        request_id = fingerprint(request)
        spec = self.specs.remembered(request_id)
        if tenant is None or spec is None:
            return None
        pins = {image: tenant.tags.remembered(image) for image in spec.images()}
        if None in pins.values():
            return None
        digests = " ".join(pin.digest or "" for pin in pins.values() if pin is not None)
        keyed = self._keys.get(request_id)
        if keyed is None or keyed[0] != digests:  # the spec on these images: key it once
            keyed = (digests, compute_key(spec.with_images(lambda image: pins[image] or image)))
            self._keys.put(request_id, keyed)
        key = keyed[1]
        hit = tenant.tiers.remembered(key)
        if hit is None:
            return None
        self.metrics.hits.labels(hit.source).inc()
        return Resolved(key, hit=hit)

    def resolve(
        self,
        workspace: str,
        request: ResolveRequest,
        *,
        build: bool = True,
        force_rebuild: bool = False,
    ) -> Resolved:
        """A hit, or the build (joined or queued) that will make the image."""
        tenant = self.tenants.get(workspace)
        spec = self.spec(request, workspace)
        key = compute_key(spec)
        if not force_rebuild:
            hit = tenant.tiers.lookup(key)
            if hit is not None:
                self.metrics.hits.labels(hit.source).inc()
                return Resolved(key, hit=hit)
        if not build:
            return Resolved(key)
        refusal = classic_builder_refusal(tuple(spec.steps()))
        if refusal is not None:  # said now, not by the engine once a build has started
            raise refusal
        spec.dockerfile_lines("environment")  # a step that cannot be written: said now, too
        body, files = stored_request(request)
        plan = {
            "request": body,
            "base_image": str(spec.base_image),
            "images": [str(image) for image in spec.images()],
            "force_rebuild": force_rebuild,
        }
        try:
            record, created = self.store.open_build(
                workspace, key, plan, files=files, max_queued=self.limits.max_queued
            )
        except QueueLimit as exc:
            raise QueueFull(
                f"workspace {workspace!r} has {exc.queued} builds queued; try again later",
                retry_after=RETRY_AFTER,
            ) from None
        if created:
            self.workers.notify()
        return Resolved(key, build=record)

    def build(self, workspace: str, build_id: str) -> BuildRecord:
        """A build of `workspace`; NotFound for an unknown one or another workspace's."""
        record = self.store.get_build(build_id)
        if record is None or record.workspace != workspace:
            raise NotFound(f"no build {build_id!r} in workspace {workspace!r}")
        return record

    def position(self, record: BuildRecord) -> int | None:
        """Place in the queue of a queued build (1 = next)."""
        return self.store.queue_position(record.id) if record.status == "queued" else None

    def metadata(self, workspace: str, key: str) -> EnvMetadata:
        """What is stored with an environment's image; NotFound when there is none."""
        metadata = self.tenants.get(workspace).tiers.get_metadata(EnvKey(key))
        if metadata is None:
            raise NotFound(f"no environment {key} in workspace {workspace!r}")
        return metadata

    def wait(self, workspace: str, build_id: str, timeout: float) -> BuildRecord:
        """Block until the build is over or `timeout` seconds pass (embedded callers)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.build(workspace, build_id)
            remaining = deadline - time.monotonic()
            if record.done or remaining <= 0:
                return record
            self.hub.wait_finished(build_id, min(self.limits.poll_seconds, remaining))

    async def wait_async(self, workspace: str, build_id: str, timeout: float) -> BuildRecord:
        """`wait` for the event loop: no thread is held while waiting, and a database outage
        shorter than OUTAGE_GRACE is waited out (the client is waiting anyway)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.hub.event(build_id, done=True)
            record = await self._patiently(self.build, workspace, build_id)
            remaining = deadline - time.monotonic()
            if record.done or remaining <= 0:
                return record
            await self.hub.sleep(event, min(self.limits.poll_seconds, remaining))

    async def follow(
        self,
        workspace: str,
        build_id: str,
        after: int = 0,
        *,
        live: bool = True,
        allowed: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[LogLine | BuildRecord]:
        """The build's log lines after `after`, live while it runs, then its final record
        (not `live`: the lines so far, then the record as it is). The caller checks first that
        the build is the workspace's: a generator's first step runs only once it streams.
        A database outage shorter than OUTAGE_GRACE is waited out: the stream stays open.
        `allowed` is asked before each read (about once a second): when it says no (the
        caller's token was revoked), the stream ends without its `end` event."""
        while True:
            if allowed is not None and not await allowed():
                return
            event = self.hub.event(build_id)
            lines = self.hub.lines_after(build_id, after)
            if lines is None:  # not running here: the database has it
                lines = await self._patiently(self.store.read_log, build_id, after)
                if not lines:
                    record = await self._patiently(self.build, workspace, build_id)
                    if record.done:
                        for line in await self._patiently(self.store.read_log, build_id, after):
                            yield line
                        yield record
                        return
            for line in lines:
                yield line
                after = line.seq
            if not live:
                yield await self._patiently(self.build, workspace, build_id)
                return
            if not lines:
                await self.hub.sleep(event, self.limits.poll_seconds)

    async def blocking(self, workspace: str | None, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work for `workspace` (reading its spec, its base image's tag, its
        registries) on one of WORKSPACE_THREADS threads of its own: a workspace whose
        registry hangs waits on its own threads, never on another workspace's."""
        name = workspace if workspace is not None else ""  # admin tokens share one
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters.setdefault(name, CapacityLimiter(WORKSPACE_THREADS))
        return await run_blocking(function, *args, limiter=limiter)

    async def _patiently(self, function: Callable[..., T], *args: Any) -> T:
        """A database call for a caller who waits anyway (a log stream, `?wait=`): an outage
        is retried for up to OUTAGE_GRACE seconds before its error is raised."""
        give_up: float | None = None
        while True:
            try:
                return await run_blocking(function, *args)
            except SQLAlchemyError as exc:
                now = time.monotonic()
                give_up = give_up or now + OUTAGE_GRACE
                if kind_of(exc) is not Kind.UNAVAILABLE or now > give_up:
                    raise
                log.warning("the database is away (%s); waiting", type(exc).__name__)
            await asyncio.sleep(self.limits.poll_seconds)  # backoff while the database is away

    def readiness(self) -> dict[str, str]:
        """Each dependency: "ok", or why it is not."""
        checks: dict[str, Callable[[], object]] = {"database": self.store.queue_length}
        if self.limits.workers:  # a server whose builds `envctl worker`s run needs no engine
            checks["engine"] = self.engine.ping
        registries = {"workspace": self.settings.workspace_registry}
        if self.settings.global_registry:
            registries["global"] = self.settings.global_registry
        for tier, address in registries.items():
            if address:
                checks[f"{tier} registry"] = functools.partial(self.tenants.ping, address)
        answers = {}
        for name, check in checks.items():
            try:
                check()
                answers[name] = "ok"
            except Exception as exc:  # any failure makes the service unready
                # the details (hosts, paths) go to the log, not to an unauthenticated caller
                log.warning("readiness: %s: %s", name, exc)
                answers[name] = f"unavailable ({type(exc).__name__})"
        return answers


async def run_blocking(
    function: Callable[..., T], *args: Any, limiter: CapacityLimiter | None = None
) -> T:
    """Run a blocking call (the database) on a worker thread, not on the event loop; with a
    `limiter`, on one of its threads (see EnvironmentService.blocking)."""
    return await to_thread.run_sync(functools.partial(function, *args), limiter=limiter)
