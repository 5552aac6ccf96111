"""BuildStore against SQLite (a file per test) and the real PostgreSQL of `scripts/services`
(a schema per test): every method, and the races it must win across threads and processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import sqlalchemy as sa

from registry.auth import Credentials
from service.records import BuildRecord, FailureRecord
from service.store import BuildStore, QueueLimit, WorkspaceExists
from tests.conftest import Services

T = TypeVar("T")
WAIT = 60  # seconds a barrier waits for the other threads or processes before the test fails


@pytest.fixture(scope="session")
def postgres(services: Services) -> Iterator[sa.Engine]:
    """The test database; a connection failure fails the tests that use it."""
    engine = sa.create_engine(services.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres: sa.Engine) -> Iterator[str]:
    """A fresh schema of the test database, first on the search path of the URL's sessions."""
    schema = f"test_store_{uuid.uuid4().hex[:12]}"
    with postgres.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = postgres.url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'envctl.db'}"
    return cast(str, request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[BuildStore]:
    """A BuildStore on a fresh database."""
    opened = BuildStore(url)
    yield opened
    opened.close()


def concurrently(n: int, call: Callable[[int], T]) -> list[T]:
    """call(0..n-1) in n threads released together; exceptions propagate."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=WAIT)
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of a table, read past the store."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.text("*")).select_from(sa.table(table))
            return [tuple(row) for row in conn.execute(query)]
    finally:
        engine.dispose()


def queue(store: BuildStore, n: int, workspace: str = "ws") -> list[BuildRecord]:
    """n new builds, queued in this order."""
    return [store.open_build(workspace, f"key-{i}", {"i": i})[0] for i in range(n)]


def active(store: BuildStore, builds: list[BuildRecord]) -> tuple[int, int]:
    """(running, queued) among these builds, as the store has them now."""
    statuses = [found.status for b in builds if (found := store.get_build(b.id)) is not None]
    return statuses.count("running"), statuses.count("queued")


def test_workspaces(store: BuildStore) -> None:
    b = store.add_workspace("b", "127.0.0.1:5002/b")
    a = store.add_workspace("a", "oci:/srv/a")
    assert b.created_at.tzinfo is UTC
    assert store.get_workspace("a") == a
    assert store.get_workspace("missing") is None
    assert store.list_workspaces() == [a, b]
    with pytest.raises(WorkspaceExists):
        store.add_workspace("a", "elsewhere")


def test_tokens(store: BuildStore) -> None:
    store.add_workspace("ws", "oci:/ws")
    store.add_workspace("other", "oci:/other")
    token, secret = store.add_token("ws")
    admin, admin_secret = store.add_token(None, admin=True)
    other, _ = store.add_token("other")
    assert secret.startswith("envctl_")
    assert len(secret) == len("envctl_") + 43
    assert (token.workspace, token.admin, token.revoked_at) == ("ws", False, None)
    assert (admin.workspace, admin.admin) == (None, True)
    assert store.authenticate(secret) == token
    assert store.authenticate(admin_secret) == admin
    assert store.authenticate(secret + "x") is None
    assert store.authenticate("") is None
    assert store.list_tokens("ws") == [token]
    assert {t.id for t in store.list_tokens()} == {token.id, admin.id, other.id}

    assert store.revoke_token(token.id)
    assert store.authenticate(secret) is None
    assert not store.revoke_token(token.id)  # already revoked
    assert not store.revoke_token("nosuchtoken")
    [revoked] = store.list_tokens("ws")
    assert revoked.revoked_at is not None
    assert not revoked.reaches("ws")
    assert store.authenticate(admin_secret) == admin


def test_token_arguments(store: BuildStore) -> None:
    with pytest.raises(ValueError, match="admin"):
        store.add_token(None)
    with pytest.raises(ValueError, match="admin"):
        store.add_token("ws", admin=True)
    with pytest.raises(ValueError, match="no workspace"):
        store.add_token("missing")


def test_token_secret_stored_only_as_its_hash(store: BuildStore, url: str) -> None:
    store.add_workspace("ws", "oci:/ws")
    _, secret = store.add_token("ws")
    [row] = rows(url, "tokens")
    assert hashlib.sha256(secret.encode()).hexdigest() in row
    assert not any(secret in str(value) for value in row)
    if url.startswith("sqlite"):
        db = Path(url.removeprefix("sqlite:///"))
        for path in db.parent.glob(db.name + "*"):  # the database, its WAL and shm files
            assert secret.encode() not in path.read_bytes()


def _files(*texts: bytes) -> dict[str, bytes]:
    return {hashlib.sha256(t).hexdigest(): t for t in texts}


def test_request_files_are_kept_once_while_a_build_needs_them(store: BuildStore, url: str) -> None:
    big, small, other = b"x" * (3 << 20), b"small", b"other"
    first, _ = store.open_build("ws", "k1", {"n": 1}, files=_files(big, small))
    second, _ = store.open_build("ws", "k2", {"n": 2}, files=_files(big, other))
    joined, created = store.open_build("ws", "k1", {"n": 3}, files=_files(b"never stored"))
    assert (joined.id, created) == (first.id, False)
    assert store.build_files(first.id) == _files(big, small)
    assert store.build_files(second.id) == _files(big, other)
    assert len(rows(url, "request_files")) == 3  # the shared file once; the joiner's not at all
    # the build row holds the request, never the files' bytes
    assert all(len(repr(row)) < 1000 for row in rows(url, "builds"))
    # nothing an active build needs is swept, however old
    assert store.sweep_files(unused_for=0) == 0
    claimed = store.claim_next("w", lease_seconds=60, max_running=5)
    assert claimed is not None
    assert claimed.id == first.id
    assert store.finish(first.id, "w", "succeeded", image="i", digest="d", source="built")
    assert store.build_files(first.id) == {}
    assert store.sweep_files(unused_for=3600) == 0  # used a moment ago: kept a while
    assert store.sweep_files(unused_for=0) == 1  # `small`: `big` is still the second's
    assert store.build_files(second.id) == _files(big, other)
    # a file stored again is the same row, marked used again
    third, _ = store.open_build("ws", "k3", {}, files=_files(small, big))
    assert store.build_files(third.id) == _files(small, big)
    assert len(rows(url, "request_files")) == 3


def test_open_build_creates_then_joins(store: BuildStore) -> None:
    request = {"spec": {"conda": ["python=3.11"], "note": "é"}, "n": [1, 2.5, None]}
    build, created = store.open_build("ws", "k", request)
    assert created
    assert (build.status, build.attempts, build.request) == ("queued", 0, request)
    assert build.queued_at.tzinfo is UTC
    assert len(build.id) == 16
    assert store.get_build(build.id) == build
    assert store.open_build("ws", "k", {"other": 1}) == (build, False)
    # another key, or the same key in another workspace, is another build
    assert store.open_build("ws", "k2", {})[1]
    assert store.open_build("ws2", "k", {})[1]
    # a running build is joined too; once it is done, the key builds again
    claimed = store.claim_next("w", lease_seconds=60, max_running=5)
    assert claimed is not None
    assert claimed.id == build.id
    assert store.open_build("ws", "k", {}) == (claimed, False)
    assert store.finish(build.id, "w", "failed", failure_class="StepFailed", message="boom")
    again, created = store.open_build("ws", "k", {})
    assert created
    assert again.id != build.id


def test_open_build_in_many_threads_creates_one(store: BuildStore) -> None:
    results = concurrently(20, lambda i: store.open_build("ws", "k", {"caller": i}))
    assert sum(created for _, created in results) == 1
    assert len({build.id for build, _ in results}) == 1
    assert active(store, [results[0][0]]) == (0, 1)


def claim_all(store: BuildStore, owner: str) -> list[str]:
    """Claim until nothing is left; the ids claimed."""
    claimed = []
    while (build := store.claim_next(owner, lease_seconds=60, max_running=1000)) is not None:
        claimed.append(build.id)
    return claimed


def process_worker(
    url: str, barrier: Barrier, results: Queue[tuple[str, bool, list[str]]], n: int
) -> None:
    """In a process of its own: open the shared key, then claim while there is work."""
    store = BuildStore(url)
    try:
        barrier.wait(timeout=WAIT)
        build, created = store.open_build("ws", "shared", {"process": n})
        barrier.wait(timeout=WAIT)
        results.put((build.id, created, claim_all(store, f"process-{n}")))
    finally:
        store.close()


def test_processes_open_one_build_and_never_claim_one_twice(store: BuildStore, url: str) -> None:
    queued = {build.id for build in queue(store, 30)}
    # Forked from a server that has imported the store but never connected: no connection of
    # this test's is inherited, and the children start in milliseconds.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.store", __name__])
    n = 4
    barrier = context.Barrier(n)
    results: Queue[tuple[str, bool, list[str]]] = context.Queue()
    processes = [
        context.Process(target=process_worker, args=(url, barrier, results, i)) for i in range(n)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=WAIT) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=WAIT)
    assert [process.exitcode for process in processes] == [0] * n
    assert sum(created for _, created, _ in outcomes) == 1
    [shared] = {build_id for build_id, _, _ in outcomes}
    claimed = [build_id for _, _, ids in outcomes for build_id in ids]
    assert sorted(claimed) == sorted(queued | {shared})


def test_claim_next_takes_the_oldest_and_leases_it(store: BuildStore) -> None:
    assert store.claim_next("w", lease_seconds=60, max_running=1) is None
    first, second = queue(store, 2)
    claimed = store.claim_next("w", lease_seconds=90, max_running=5)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.owner, claimed.attempts) == (
        first.id,
        "running",
        "w",
        1,
    )
    assert claimed.queued_at == first.queued_at
    assert claimed.started_at is not None
    assert claimed.lease_until is not None
    assert claimed.lease_until - claimed.started_at == timedelta(seconds=90)
    assert abs(claimed.started_at - datetime.now(UTC)) < timedelta(seconds=30)
    assert store.running() == [claimed]
    nxt = store.claim_next("w", lease_seconds=60, max_running=5)
    assert nxt is not None
    assert nxt.id == second.id
    assert store.claim_next("w", lease_seconds=60, max_running=5) is None


def test_claim_next_in_many_threads_never_claims_twice(store: BuildStore) -> None:
    queued = {build.id for build in queue(store, 40)}
    claimed = concurrently(8, lambda i: claim_all(store, f"thread-{i}"))
    flat = [build_id for ids in claimed for build_id in ids]
    assert len(flat) == len(set(flat))
    assert set(flat) == queued
    assert store.queue_length() == 0


def test_max_running_per_workspace(store: BuildStore) -> None:
    a1, a2, a3 = queue(store, 3, "a")
    [b1] = queue(store, 1, "b")

    def claim() -> str | None:
        build = store.claim_next("w", lease_seconds=60, max_running=2)
        return None if build is None else build.id

    assert [claim(), claim(), claim(), claim()] == [a1.id, a2.id, b1.id, None]
    assert active(store, [a1, a2, a3]) == (2, 1)
    assert store.finish(a1.id, "w", "succeeded")
    assert claim() == a3.id


def test_max_running_holds_under_concurrency(store: BuildStore) -> None:
    queued = queue(store, 10)
    claimed = concurrently(
        8, lambda i: store.claim_next(f"thread-{i}", lease_seconds=60, max_running=3)
    )
    assert len([build for build in claimed if build is not None]) == 3
    assert active(store, queued) == (3, 7)


def test_only_the_owner_renews_requeues_or_finishes(store: BuildStore) -> None:
    [build] = queue(store, 1)
    claimed = store.claim_next("owner", lease_seconds=10, max_running=1)
    assert claimed is not None
    assert claimed.lease_until is not None
    assert not store.renew(build.id, "intruder", lease_seconds=600)
    assert not store.requeue(build.id, "intruder")
    assert store.finish(build.id, "intruder", "succeeded") is None
    assert store.get_build(build.id) == claimed

    assert store.renew(build.id, "owner", lease_seconds=600)
    renewed = store.get_build(build.id)
    assert renewed is not None
    assert renewed.lease_until is not None
    assert renewed.lease_until > claimed.lease_until

    done = store.finish(
        build.id, "owner", "succeeded", image="reg/ws:k", digest="sha256:ab", source="built"
    )
    assert done is not None
    assert done.done
    assert done.finished_at is not None
    assert (done.image, done.digest, done.source, done.lease_until) == (
        "reg/ws:k",
        "sha256:ab",
        "built",
        None,
    )
    assert store.finish(build.id, "owner", "failed") is None  # an outcome is final
    assert not store.renew(build.id, "owner", lease_seconds=60)
    assert not store.requeue(build.id, "owner")
    with pytest.raises(ValueError, match="outcome"):
        store.finish(build.id, "owner", "queued")


def test_requeue(store: BuildStore) -> None:
    first, second = queue(store, 2)
    claimed = store.claim_next("w", lease_seconds=60, max_running=5)
    assert claimed is not None
    assert claimed.id == first.id
    assert not store.requeue(first.id, "w", expired_only=True)  # its lease runs
    assert store.requeue(first.id, "w")
    requeued = store.get_build(first.id)
    assert requeued is not None
    assert (requeued.status, requeued.owner, requeued.lease_until, requeued.started_at) == (
        "queued",
        None,
        None,
        None,
    )
    assert requeued.queued_at == first.queued_at
    assert store.queue_position(first.id) == 1  # still ahead of the second build
    again = store.claim_next("w2", lease_seconds=-1, max_running=5)  # a lease already over
    assert again is not None
    assert (again.id, again.attempts) == (first.id, 2)
    assert store.requeue(first.id, None, expired_only=True)  # whoever owned it
    assert not store.requeue(second.id, None)  # not running
    assert not store.requeue("nosuchbuild", None)


def test_queue_position_and_counts(store: BuildStore) -> None:
    a1, a2 = queue(store, 2, "a")
    [b1] = queue(store, 1, "b")
    assert [store.queue_position(b.id) for b in (a1, a2, b1)] == [1, 2, 3]
    assert store.queue_length() == 3
    assert store.claim_next("w", lease_seconds=60, max_running=5) is not None
    assert [store.queue_position(b.id) for b in (a1, a2, b1)] == [None, 1, 2]
    assert active(store, [a1, a2]) == (1, 1)
    assert active(store, [b1]) == (0, 1)
    assert store.queue_length() == 2
    assert store.queue_position("nosuchbuild") is None


def test_get_build(store: BuildStore) -> None:
    assert store.get_build("nosuchbuild") is None
    first, _ = store.open_build("ws", "k", {"n": 1})
    assert store.get_build(first.id) == first


def test_a_new_build_beyond_max_queued_is_refused_and_joining_never_is(store: BuildStore) -> None:
    first, created = store.open_build("ws", "a", {}, max_queued=1)
    assert created
    with pytest.raises(QueueLimit) as info:
        store.open_build("ws", "b", {}, max_queued=1)
    assert info.value.queued == 1
    assert store.open_build("ws", "a", {}, max_queued=1) == (first, False)  # joins
    assert store.open_build("other", "b", {}, max_queued=1)[1]  # per workspace
    assert store.claim_next("w", lease_seconds=60, max_running=5) is not None
    assert store.open_build("ws", "b", {}, max_queued=1)[1]  # running ones do not count


def test_logs(store: BuildStore) -> None:
    build, other = queue(store, 2)
    assert store.read_log(build.id) == []
    assert store.append_log(build.id, []) == 0
    assert store.append_log(build.id, [("solve", "one"), ("solve", "two")]) == 2
    assert store.append_log(other.id, [("build", "elsewhere")]) == 1
    assert store.append_log(build.id, [("build", "three")]) == 3
    assert store.append_log(build.id, []) == 3
    lines = store.read_log(build.id)
    assert [(line.seq, line.stage, line.text) for line in lines] == [
        (1, "solve", "one"),
        (2, "solve", "two"),
        (3, "build", "three"),
    ]
    assert all(line.at.tzinfo is UTC for line in lines)
    assert [line.seq for line in store.read_log(build.id, after=1)] == [2, 3]
    assert [line.seq for line in store.read_log(build.id, after=1, limit=1)] == [2]
    assert store.read_log(build.id, after=3) == []
    with pytest.raises(LookupError):
        store.append_log("nosuchbuild", [("build", "x")])


def test_log_appends_from_many_threads_get_consecutive_seqs(store: BuildStore) -> None:
    [build] = queue(store, 1)
    per_thread = 10

    def append(i: int) -> list[int]:
        return [store.append_log(build.id, [(f"t{i}", str(j))]) for j in range(per_thread)]

    returned = concurrently(8, append)
    lines = store.read_log(build.id)
    assert [line.seq for line in lines] == list(range(1, 8 * per_thread + 1))
    assert sorted(seq for seqs in returned for seq in seqs) == [line.seq for line in lines]
    for i in range(8):  # each thread's lines in the order it wrote them
        assert [line.text for line in lines if line.stage == f"t{i}"] == [
            str(j) for j in range(per_thread)
        ]


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "envctl.db"
    BuildStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(ValueError, match="file"):
        BuildStore("sqlite://")


def test_stores_on_one_database_share_it(store: BuildStore, url: str) -> None:
    second = BuildStore(url)  # creating the tables again is harmless
    try:
        build, _ = store.open_build("ws", "k", {})
        assert second.open_build("ws", "k", {}) == (build, False)
        claimed = second.claim_next("w", lease_seconds=60, max_running=1)
        assert claimed is not None
        assert store.running() == [claimed]
    finally:
        second.close()


def test_a_workspaces_own_credentials_are_set_replaced_and_removed(store: BuildStore) -> None:
    store.add_workspace("ws", "127.0.0.1:1/ws")
    store.add_workspace("other", "127.0.0.1:1/other")
    assert store.get_credentials("ws") is None
    store.set_credentials("ws", Credentials("alice", "one"))
    store.set_credentials("ws", Credentials("alice", "two"))
    assert store.get_credentials("ws") == Credentials("alice", "two")
    assert store.get_credentials("other") is None
    store.set_credentials("ws", None)
    assert store.get_credentials("ws") is None
    with pytest.raises(LookupError):
        store.set_credentials("nobody", Credentials("x", "y"))


def test_a_remembered_failure_is_per_workspace_and_key_replaced_and_forgotten(
    store: BuildStore, url: str
) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    failure = FailureRecord("ws", "k", "StepFailed", "RUN false: exit 1", "b1", "tail\n", at)
    assert store.remembered_failure("ws", "k") is None
    store.remember_failure(failure)
    second = BuildStore(url)  # another worker or server on the database sees it
    try:
        assert second.remembered_failure("ws", "k") == failure
        assert second.remembered_failure("other", "k") is None
        assert second.remembered_failure("ws", "k2") is None
        newer = replace(failure, kind="SolveError", message="no numpy", build_id="b2")
        second.remember_failure(newer)
        assert store.remembered_failure("ws", "k") == newer
        assert len(rows(url, "failures")) == 1
        assert store.forget_failure("ws", "k") is True
        assert second.remembered_failure("ws", "k") is None
        assert store.forget_failure("ws", "k") is False
    finally:
        second.close()
