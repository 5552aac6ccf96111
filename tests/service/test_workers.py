"""Build workers as processes of their own (issue 12): two API servers that run no builds and
two `envctl worker`s, each with its own Docker engine and ENVCTL_HOME (as two hosts have), on
one PostgreSQL database. One build per key, the takeover of a killed worker's build and the
remembered failures hold across them, and every waiting client gets its answer.

The burst's figures (builds per minute) are printed; with one worker and with two:

    ENVCTL_TEST_BURST_WORKERS=1,2 .venv/bin/pytest -q -s tests/service/test_workers.py -k burst
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from client.errors import BuildFailed
from client.http import AsyncEnvctlClient, EnvctlClient
from client.models import ImageView, LogEventView
from specio.request import ResolveRequest
from tests.api.server import Deployment, EnvctlServer, Tenant, postgres_database, until
from tests.conftest import Services

BUILD_SECONDS = 120.0  # bound on the burst's builds, or on one slow build and its takeover
SPECS = 10
RESOLVES = 30
# Every process: a short lease, so that a worker another host could not see die is taken over
# within seconds; room for the whole burst in the workspace's queue.
COMMON = {"ENVCTL_LEASE_SECONDS": "6", "ENVCTL_MAX_RUNNING": "4", "ENVCTL_MAX_QUEUED": "64"}
COLUMNS = ("id", "owner", "status", "attempts", "failure_class")
BURST_WORKERS = [int(n) for n in os.environ.get("ENVCTL_TEST_BURST_WORKERS", "2").split(",")]


@dataclass(frozen=True)
class Cluster:
    """Two API servers (no builds of their own) and two workers on one database."""

    deployment: Deployment
    database_url: str
    servers: list[EnvctlServer]
    workers: list[EnvctlServer]
    tenant: Tenant

    def builds(self, *columns: str) -> list[dict[str, Any]]:
        """The workspace's build rows, oldest first, read past the service."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                query = sa.text(
                    f"SELECT {', '.join(columns)} FROM builds WHERE workspace = :ws "  # noqa: S608
                    "ORDER BY queued_at, id"
                )
                return [
                    dict(row) for row in conn.execute(query, {"ws": self.tenant.name}).mappings()
                ]
        finally:
            engine.dispose()

    def build(self, build_id: str | None) -> dict[str, Any]:
        """One build's row (COLUMNS)."""
        (row,) = [row for row in self.builds(*COLUMNS) if row["id"] == build_id]
        return row

    def worker_of(self, owner: str) -> EnvctlServer:
        """The worker whose process owns (or owned) a build: `host:pid:id`."""
        pid = int(owner.split(":")[1])
        (worker,) = [w for w in self.workers if w.process is not None and w.pid == pid]
        return worker

    def restart(self, worker: EnvctlServer) -> None:
        """Start a stopped or killed worker again (the same home and engine)."""
        if worker.process is None:
            worker.start()


@pytest.fixture(scope="module")
def cluster(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("workers")
    with (
        postgres_database(services.database_url) as url,
        Deployment(services, root / "deployment", database_url=url, env=COMMON) as deployment,
    ):
        tenant = deployment.workspace("burst")
        servers = [
            deployment.serve(name=f"api-{n}", env={"ENVCTL_WORKERS": "0"}, wait=False)
            for n in (1, 2)
        ]
        engines = (services.docker_host, services.second_docker_host)
        workers = [
            deployment.worker(
                name=f"worker-{n}",
                env={"DOCKER_HOST": engine, "ENVCTL_WORKERS": "1"},
                home=root / f"worker-{n}-home",
                wait=False,
            )
            for n, engine in enumerate(engines, start=1)
        ]
        for process in [*servers, *workers]:
            process.wait_healthy()
        yield Cluster(deployment, url, servers, workers, tenant)


def _spec(services: Services, name: str, steps: str = "") -> ResolveRequest:
    """A small spec from the local channel, one step on the engine; `name` makes its key."""
    return ResolveRequest(
        spec={
            "base_image": services.busybox_image,
            "conda": {"dependencies": ["envctl-hello"]},
            "variables": {"ENVCTL_TEST_SPEC": name},
            "docker_steps": f"RUN echo {name} > /spec\n{steps}".strip(),
        }
    )


def _client(cluster: Cluster, server: EnvctlServer) -> EnvctlClient:
    tenant = cluster.tenant
    return EnvctlClient(server.url, tenant.token, workspace=tenant.name, timeout=BUILD_SECONDS)


@pytest.mark.parametrize("workers", BURST_WORKERS)
def test_a_burst_of_thirty_resolves_of_ten_new_specs_makes_ten_builds_over_the_workers(
    cluster: Cluster, services: Services, workers: int
) -> None:
    active, idle = cluster.workers[:workers], cluster.workers[workers:]
    for worker in idle:  # the figures with fewer workers: the others stopped for the burst
        worker.stop()
    try:
        run = uuid.uuid4().hex[:8]
        specs = [_spec(services, f"burst-{run}-{n}") for n in range(SPECS)]
        tenant = cluster.tenant
        one, two = cluster.servers

        async def resolve_all() -> list[ImageView | BaseException]:
            async with (
                AsyncEnvctlClient(one.url, tenant.token, workspace=tenant.name) as first,
                AsyncEnvctlClient(two.url, tenant.token, workspace=tenant.name) as second,
            ):
                # spec n is asked for three times: through the first server, the second, the first
                clients = (first, second)
                return await asyncio.gather(
                    *(
                        clients[(n // SPECS) % 2].resolve_image(
                            specs[n % SPECS], timeout=BUILD_SECONDS
                        )
                        for n in range(RESOLVES)
                    ),
                    return_exceptions=True,
                )

        before = {row["id"] for row in cluster.builds("id")}
        answers = asyncio.run(resolve_all())
    finally:
        for worker in idle:
            cluster.restart(worker)

    failures = [a for a in answers if not isinstance(a, ImageView)]
    assert not failures, failures
    images = [a for a in answers if isinstance(a, ImageView)]
    for n in range(SPECS):  # the three answers of one spec: one image
        assert len({images[i].digest for i in range(n, RESOLVES, SPECS)}) == 1
    assert len({image.key for image in images}) == SPECS
    rows = [
        row
        for row in cluster.builds(*COLUMNS, "key", "queued_at", "finished_at")
        if row["id"] not in before
    ]
    assert len(rows) == SPECS, rows  # exactly one build per key, whatever asked where
    assert {row["key"] for row in rows} == {image.key for image in images}
    assert {(row["status"], row["attempts"]) for row in rows} == {("succeeded", 1)}
    builders = {cluster.worker_of(row["owner"]).name for row in rows}
    assert builders == {worker.name for worker in active}, "the builds spread over the workers"

    queued: datetime = min(row["queued_at"] for row in rows)
    finished: datetime = max(row["finished_at"] for row in rows)
    seconds = (finished - queued).total_seconds()
    per_worker = {w.name: sum(cluster.worker_of(r["owner"]) is w for r in rows) for w in active}
    print(  # the figures of the NOTES: run with -s
        f"\n{workers} worker(s): {SPECS} builds for {RESOLVES} resolves in {seconds:.1f} s, "
        f"{SPECS / seconds * 60:.1f} builds per minute; by worker: {per_worker}"
    )


def test_a_failure_remembered_by_one_worker_is_answered_by_the_other(
    cluster: Cluster, services: Services
) -> None:
    request = _spec(services, f"fails-{uuid.uuid4().hex[:8]}", "RUN echo failing-step && false")
    one, two = cluster.servers
    with _client(cluster, one) as envctl, pytest.raises(BuildFailed) as first:
        envctl.resolve_image(request, timeout=BUILD_SECONDS)
    assert "remembered" not in str(first.value), first.value
    failed = cluster.build(first.value.build_id)
    assert failed["failure_class"] == "StepFailed", failed
    built_it = cluster.worker_of(failed["owner"])
    (other,) = [w for w in cluster.workers if w is not built_it]

    built_it.stop()  # only the other worker (another host, another home) can claim the next
    try:
        with _client(cluster, two) as envctl, pytest.raises(BuildFailed) as again:
            envctl.resolve_image(request, timeout=BUILD_SECONDS)
    finally:
        cluster.restart(built_it)
    assert "remembered" in str(again.value), again.value
    answered = cluster.build(again.value.build_id)
    assert cluster.worker_of(answered["owner"]) is other
    assert answered["failure_class"] == "StepFailed"

    with _client(cluster, two) as envctl, pytest.raises(BuildFailed) as forced:
        envctl.resolve_image(request, timeout=BUILD_SECONDS, force_rebuild=True)
    assert "remembered" not in str(forced.value), "--force-rebuild builds again"


def test_a_batch_worker_builds_what_is_queued_then_exits_when_idle(
    cluster: Cluster, services: Services
) -> None:
    """`envctl worker --exit-when-idle S`, as a Kubernetes Job runs it: the queue's builds,
    then exit 0 once nothing ran for S seconds."""
    for worker in cluster.workers:  # the batch worker alone claims
        worker.stop()
    try:
        with _client(cluster, cluster.servers[0]) as envctl:
            queued = envctl.resolve(_spec(services, f"batch-{uuid.uuid4().hex[:8]}"))
            assert not isinstance(queued, ImageView), "a new spec is a build"
            batch = cluster.deployment.worker(
                name="batch",
                env={"DOCKER_HOST": services.second_docker_host, "ENVCTL_WORKERS": "1"},
                home=cluster.deployment.root / "batch-home",
                args=["--exit-when-idle", "2"],
                wait=False,
            )
            assert batch.process is not None
            process = batch.process
            done = envctl.build(queued.build_id, wait=60)
            assert done.status == "succeeded", done
            assert cluster.build(queued.build_id)["owner"].split(":")[1] == str(process.pid)
            assert process.wait(timeout=30) == 0, batch.log_tail()
            batch.process = None  # exited by itself
    finally:
        for worker in cluster.workers:
            cluster.restart(worker)
    assert "no build for 2 s: exiting" in batch.log_tail()


def test_a_worker_killed_mid_build_has_its_build_finished_by_the_other(
    cluster: Cluster, services: Services
) -> None:
    # The step prints a marker its own text does not contain (so the marker in the log means
    # it runs), then sleeps long enough for the kill to come while it runs.
    request = _spec(
        services,
        f"killed-{uuid.uuid4().hex[:8]}",
        "RUN echo slow-$((6 * 7)) && sleep 8 && echo slow-done",
    )
    received: list[LogEventView] = []
    outcomes: list[ImageView | BaseException] = []

    def wait_for_image(server: EnvctlServer, on_log: Any) -> None:
        try:
            with _client(cluster, server) as envctl:
                outcomes.append(
                    envctl.resolve_image(request, on_log=on_log, timeout=BUILD_SECONDS * 2)
                )
        except BaseException as exc:
            outcomes.append(exc)

    waiters = [
        threading.Thread(target=wait_for_image, args=(server, on_log), name=f"client-{n}")
        for n, (server, on_log) in enumerate(
            [(cluster.servers[0], received.append), (cluster.servers[1], None)]
        )
    ]
    for waiter in waiters:
        waiter.start()
    until(
        "the slow step to run",
        lambda: True if any(line.text == "slow-42" for line in list(received)) else None,
        seconds=BUILD_SECONDS,
    )
    (running,) = cluster.builds(*COLUMNS)[-1:]
    assert (running["status"], running["attempts"]) == ("running", 1), running
    killed = cluster.worker_of(running["owner"])
    (survivor,) = [w for w in cluster.workers if w is not killed]
    killed.kill()  # kill -9: no requeue, its lease left to run out
    try:
        for waiter in waiters:
            waiter.join(timeout=BUILD_SECONDS * 2)
        assert not any(w.is_alive() for w in waiters), "a waiting client got no answer"
    finally:
        cluster.restart(killed)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, ImageView), outcome
        assert (outcome.build_id, outcome.source) == (running["id"], "built")
    build = cluster.build(running["id"])
    assert (build["status"], build["attempts"]) == ("succeeded", 2), build
    assert cluster.worker_of(build["owner"]) is survivor, "the other worker finished it"
    texts = [line.text for line in received]
    assert any("queued again" in text for text in texts), texts
    assert texts.count("slow-done") == 1, texts
