"""The composition root: the service core of one process, built from settings in one place.

    envctl serve    api.app.create_app → environment_service(settings): the API, and
                    ENVCTL_WORKERS build threads beside it (0: none, `envctl worker`s build)
    envctl worker   build_workers(settings): build threads and the lease keeper, no API
    embedded CLI    environment_service(settings, limits=…, workspaces=…, policed=False)

Every part takes what it uses: the store, the engine, the workspaces (`Tenants`), the spec
reader, the log hub and metrics are made here once and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from builder.docker import DockerBuilder
from service.loghub import LogHub
from service.metrics import ServiceMetrics
from service.records import Workspace
from service.service import EnvironmentService
from service.settings import ServiceLimits, Settings
from service.specs import SpecReader
from service.store import BuildStore
from service.tenants import Tenants
from service.workers import Workers

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Core:
    """The parts one process shares between its API (if any) and its build workers."""

    settings: Settings
    store: BuildStore
    engine: DockerBuilder
    tenants: Tenants
    specs: SpecReader
    hub: LogHub
    metrics: ServiceMetrics
    limits: ServiceLimits
    workers: Workers

    def readiness(self) -> dict[str, str]:
        """The database and the engine a worker needs: "ok", or why not."""
        answers = {}
        for name, check in (("database", self.store.queue_length), ("engine", self.engine.ping)):
            try:
                check()
                answers[name] = "ok"
            except Exception as exc:  # any failure makes the worker unready
                answers[name] = f"unavailable ({type(exc).__name__})"
        return answers

    def close(self) -> None:
        """Close the registries, the engine's connections and the database (after `stop`)."""
        self.tenants.close()
        self.engine.close()
        self.store.close()


def build_core(
    settings: Settings,
    *,
    limits: ServiceLimits | None = None,
    workspaces: Mapping[str, Workspace] | None = None,
    policed: bool = True,
) -> Core:
    """The store, engine, workspaces and workers `settings` configure. `workspaces`, when
    given, are the only ones served, whatever the database holds (the embedded CLI's one);
    `policed=False` lets builds pull as the host's user would (the embedded CLI)."""
    store = BuildStore(settings.database)
    limits = limits or ServiceLimits.of(settings)
    engine = DockerBuilder(
        base_url=settings.docker_host or DEFAULT_DOCKER_HOST,
        timeout=settings.build_timeout,
        memory=settings.build_memory,
        cpus=settings.build_cpus,
        network=settings.build_network,  # type: ignore[arg-type]
        cgroup_parent=settings.build_cgroup_parent,
    )
    specs = SpecReader(settings)
    tenants = Tenants(settings, store, engine, workspaces, specs.default_base, policed=policed)
    hub = LogHub()
    metrics = ServiceMetrics(store.queue_length)
    workers = Workers(
        store, tenants, specs, limits=limits, home=settings.home, hub=hub, metrics=metrics
    )
    return Core(settings, store, engine, tenants, specs, hub, metrics, limits, workers)


def environment_service(
    settings: Settings,
    *,
    limits: ServiceLimits | None = None,
    workspaces: Mapping[str, Workspace] | None = None,
    policed: bool = True,
) -> EnvironmentService:
    """The service `envctl serve` and the embedded CLI run (see `build_core`)."""
    core = build_core(settings, limits=limits, workspaces=workspaces, policed=policed)
    return EnvironmentService(
        settings,
        core.store,
        tenants=core.tenants,
        specs=core.specs,
        workers=core.workers,
        engine=core.engine,
        limits=core.limits,
        hub=core.hub,
        metrics=core.metrics,
        policed=policed,
    )
