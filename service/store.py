"""Build records in a database through SQLAlchemy: SQLite by default (one file), PostgreSQL
when several service processes share one database.

Every method is one short transaction. What must hold across threads and processes is held by
the database, not by Python locks:

- one active (queued or running) build per workspace and key: a partial unique index, which
  `open_build` relies on when two callers queue the same key at once;
- a queued build is claimed once: `claim_next` moves it with a compare-and-set UPDATE, and
  claims are serialized (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory lock), so
  `max_running` holds across processes too;
- a lease is renewed, and a build requeued or finished, only by the process that owns it;
- a deterministic failure is remembered per workspace and key in `failures`, so every worker
  and server on the database gives the same answer for that key, whichever host asks.

Timestamps are aware UTC datetimes in and out (SQLite keeps them as naive UTC text).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from service.accounts import Accounts, WorkspaceExists
from service.records import BuildRecord, BuildStatus, FailureRecord, LogLine
from service.tables import (
    CLAIM_LOCK,
    QUEUE_LOCK,
    advisory_lock,
    build_files,
    build_logs,
    builds,
    count_rows,
    failures,
    is_active,
    open_engine,
    request_files,
    utc_now,
)

__all__ = ["BuildStore", "QueueLimit", "WorkspaceExists"]
OPEN_RETRIES = 10  # open_build: the active build it collided with may finish before it is read


class QueueLimit(Exception):
    """`open_build` would queue a build beyond the workspace's `max_queued`."""

    def __init__(self, queued: int) -> None:
        self.queued = queued
        super().__init__(f"{queued} builds queued")


def _get(conn: Connection, build_id: str) -> BuildRecord | None:
    row = conn.execute(sa.select(builds).where(builds.c.id == build_id)).mappings().first()
    return None if row is None else BuildRecord(**row)


def _cas(
    conn: Connection, build_id: str, when: BuildStatus, *where: Any, **values: Any
) -> BuildRecord | None:
    """Compare-and-set: update the build while its status is `when` (and `where` holds); the
    updated record, or None when it no longer matched."""
    query = sa.update(builds).where(builds.c.id == build_id, builds.c.status == when, *where)
    if conn.execute(query.values(**values)).rowcount != 1:
        return None
    return _get(conn, build_id)


def _keep_files(conn: Connection, build_id: str, files: Mapping[str, bytes]) -> None:
    """Store `files` (by sha256) for the new build `build_id`; a file already stored is only
    marked used, which locks its row against a concurrent sweep."""
    now = utc_now()
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(request_files)
    upsert = insert.on_conflict_do_update(
        index_elements=[request_files.c.sha256], set_={"used_at": now}
    )
    rows = [{"sha256": sha, "data": data, "used_at": now} for sha, data in sorted(files.items())]
    for row in rows:  # one at a time: a request's files may be tens of megabytes together
        conn.execute(upsert, row)
    conn.execute(
        sa.insert(build_files), [{"build_id": build_id, "sha256": r["sha256"]} for r in rows]
    )


def _of_key(workspace: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(builds.c.workspace == workspace, builds.c["key"] == key)


def _failure_of(workspace: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(failures.c.workspace == workspace, failures.c["key"] == key)


class BuildStore(Accounts):
    """Workspaces, tokens (`service.accounts`), builds, their logs and remembered failures.
    Thread-safe; every method is one transaction."""

    def __init__(self, url: str) -> None:
        """Open (and create the tables of) the database at an SQLAlchemy URL."""
        self._engine, self._writer = open_engine(url)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self._engine.dispose()

    # builds
    def open_build(
        self,
        workspace: str,
        key: str,
        request: dict[str, Any],
        *,
        files: Mapping[str, bytes] | None = None,
        max_queued: int | None = None,
    ) -> tuple[BuildRecord, bool]:
        """Join the active (queued or running) build of `key` in `workspace`, or queue a new one
        with `request` and the `files` (by sha256) it needs, which `build_files` gives back
        until it finishes. Returns the record and whether it was created. Race-free across
        processes. A new build beyond `max_queued` queued in the workspace raises QueueLimit
        (joining never does)."""
        files = files or {}
        active = sa.select(builds).where(_of_key(workspace, key), is_active)
        queued = (builds.c.workspace == workspace, builds.c.status == "queued")
        for _ in range(OPEN_RETRIES):
            record = BuildRecord(
                uuid.uuid4().hex[:16], workspace, key, "queued", request, utc_now()
            )
            try:
                with self._writer.begin() as conn:
                    row = conn.execute(active).mappings().first()
                    if row is not None:
                        return BuildRecord(**row), False
                    if max_queued is not None:
                        advisory_lock(conn, QUEUE_LOCK)  # the count holds until we insert
                        count = count_rows(conn, *queued)
                        if count >= max_queued:
                            raise QueueLimit(count)
                    conn.execute(sa.insert(builds).values(asdict(record)))
                    if files:
                        _keep_files(conn, record.id, files)
                return record, True
            except IntegrityError:
                continue  # another process queued it since we looked: join that build
        raise RuntimeError(f"open_build {workspace}/{key}: lost {OPEN_RETRIES} races in a row")

    def build_files(self, build_id: str) -> dict[str, bytes]:
        """The files (by sha256) an active build was queued with; none once it finished."""
        query = sa.select(request_files.c.sha256, request_files.c.data).join(build_files)
        query = query.where(build_files.c.build_id == build_id)
        with self._engine.begin() as conn:
            return {sha: bytes(data) for sha, data in conn.execute(query).all()}

    def sweep_files(self, *, unused_for: float) -> int:
        """Delete the request files no active build references and none has used for
        `unused_for` seconds; how many. A build being queued meanwhile marks the files it
        shares as used first (its upsert takes their rows), so none is deleted under it."""
        referenced = sa.select(build_files.c.sha256).where(
            build_files.c.sha256 == request_files.c.sha256
        )
        sweep = sa.delete(request_files).where(
            request_files.c.used_at < utc_now() - timedelta(seconds=unused_for),
            ~sa.exists(referenced),
        )
        with self._writer.begin() as conn:
            return conn.execute(sweep).rowcount

    def get_build(self, build_id: str) -> BuildRecord | None:
        """A build by id, whatever its workspace (callers check the workspace)."""
        with self._engine.begin() as conn:
            return _get(conn, build_id)

    def queue_position(self, build_id: str) -> int | None:
        """1 for the next queued build to be claimed, 2 after it...; None unless queued."""
        with self._engine.begin() as conn:
            build = _get(conn, build_id)
            if build is None or build.status != "queued":
                return None
            same_time = sa.and_(builds.c.queued_at == build.queued_at, builds.c.id < build.id)
            earlier = sa.or_(builds.c.queued_at < build.queued_at, same_time)
            return count_rows(conn, builds.c.status == "queued", earlier) + 1

    def queue_length(self) -> int:
        """Queued builds across every workspace."""
        with self._engine.begin() as conn:
            return count_rows(conn, builds.c.status == "queued")

    def claim_next(
        self, owner: str, *, lease_seconds: float, max_running: int
    ) -> BuildRecord | None:
        """Take the oldest queued build whose workspace runs fewer than `max_running` builds:
        it becomes running, owned by `owner`, leased for `lease_seconds`, attempts + 1."""
        running = sa.select(builds.c.workspace).where(builds.c.status == "running")
        full = running.group_by(builds.c.workspace).having(sa.func.count() >= max_running)
        queued = sa.select(builds.c.id).where(builds.c.status == "queued")
        oldest = queued.where(builds.c.workspace.not_in(full))
        oldest = oldest.order_by(builds.c.queued_at, builds.c.id).limit(1)
        with self._writer.begin() as conn:
            advisory_lock(conn, CLAIM_LOCK)
            while (build_id := conn.scalar(oldest)) is not None:
                now = utc_now()
                values: dict[str, Any] = {"status": "running", "owner": owner, "started_at": now}
                values["lease_until"] = now + timedelta(seconds=lease_seconds)
                values["attempts"] = builds.c.attempts + 1
                # Compare-and-set: another process may have claimed it since we looked.
                if claimed := _cas(conn, build_id, "queued", **values):
                    return claimed
        return None

    def claim(self, build_id: str, owner: str, *, lease_seconds: float) -> BuildRecord | None:
        """Take one queued build (the embedded CLI runs the build it asked for, whatever the
        limits); None when it is no longer queued."""
        now = utc_now()
        lease_until = now + timedelta(seconds=lease_seconds)
        with self._writer.begin() as conn:
            return _cas(
                conn,
                build_id,
                "queued",
                status="running",
                owner=owner,
                started_at=now,
                attempts=builds.c.attempts + 1,
                lease_until=lease_until,
            )

    def renew(self, build_id: str, owner: str, *, lease_seconds: float) -> bool:
        """Extend the lease of a build `owner` runs; False if it no longer owns it."""
        lease_until = utc_now() + timedelta(seconds=lease_seconds)
        owned = builds.c.owner == owner
        return self._move(build_id, "running", owned, lease_until=lease_until) is not None

    def running(self) -> list[BuildRecord]:
        """Every running build (to find those whose owner died)."""
        query = sa.select(builds).where(builds.c.status == "running").order_by(builds.c.started_at)
        with self._engine.begin() as conn:
            return [BuildRecord(**row) for row in conn.execute(query).mappings()]

    def requeue(self, build_id: str, owner: str | None, *, expired_only: bool = False) -> bool:
        """Put a running build owned by `owner` back in the queue (keeping its queued_at).

        `owner=None` requeues it whoever runs it. With `expired_only`, only a build whose lease
        has run out is requeued: a reaper passes it so that an owner that renewed since the
        reaper looked keeps its build. False when nothing was requeued."""
        where = [] if owner is None else [builds.c.owner == owner]
        if expired_only:
            where.append(builds.c.lease_until < utc_now())
        values = {"owner": None, "lease_until": None, "started_at": None}
        return self._move(build_id, "running", *where, status="queued", **values) is not None

    def finish(
        self,
        build_id: str,
        owner: str,
        status: BuildStatus,
        *,
        image: str | None = None,
        digest: str | None = None,
        source: str | None = None,
        failure_class: str | None = None,
        message: str | None = None,
    ) -> BuildRecord | None:
        """Record a running build's outcome; None if `owner` no longer owns it.
        ValueError unless `status` is an outcome (succeeded or failed)."""
        if status not in ("succeeded", "failed"):
            raise ValueError(f"not an outcome: {status!r}")
        outcome = {"image": image, "digest": digest, "source": source, "message": message}
        outcome |= {"status": status, "failure_class": failure_class, "lease_until": None}
        with self._writer.begin() as conn:
            done = _cas(
                conn, build_id, "running", builds.c.owner == owner, finished_at=utc_now(), **outcome
            )
            if done is not None:  # its files are not needed any more: sweep_files may take them
                conn.execute(sa.delete(build_files).where(build_files.c.build_id == build_id))
        return done

    # remembered failures
    def remember_failure(self, failure: FailureRecord) -> None:
        """Remember a key's deterministic failure (replacing an older one of the same key)."""
        row = asdict(failure)
        insert = (pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert)(
            failures
        )
        keep = {name: row[name] for name in ("kind", "message", "build_id", "log_tail")}
        upsert = insert.on_conflict_do_update(
            index_elements=[failures.c.workspace, failures.c["key"]],
            set_=keep | {"failed_at": row["failed_at"]},
        )
        with self._writer.begin() as conn:
            conn.execute(upsert, row)

    def remembered_failure(self, workspace: str, key: str) -> FailureRecord | None:
        """The failure remembered for `key` in `workspace`, if any."""
        query = sa.select(failures).where(_failure_of(workspace, key))
        with self._engine.begin() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else FailureRecord(**row)

    def forget_failure(self, workspace: str, key: str) -> bool:
        """Forget `key`'s remembered failure in `workspace`; False when there was none."""
        query = sa.delete(failures).where(_failure_of(workspace, key))
        with self._writer.begin() as conn:
            return conn.execute(query).rowcount == 1

    # logs
    def append_log(
        self, build_id: str, lines: Sequence[tuple[str, str]], *, at: datetime | None = None
    ) -> int:
        """Append (stage, text) lines, stamped `at` (default: now); returns the last seq
        written. LookupError when there is no such build."""
        with self._writer.begin() as conn:
            # Appenders to one build take turns on its row, so each reads the last seq the
            # previous one wrote (FOR NO KEY UPDATE in PostgreSQL; SQLite has one writer).
            lock = sa.select(builds.c.id).where(builds.c.id == build_id)
            if conn.execute(lock.with_for_update(key_share=True)).first() is None:
                raise LookupError(f"no build {build_id!r}")
            seq = sa.select(sa.func.max(build_logs.c.seq)).where(build_logs.c.build_id == build_id)
            last = int(conn.scalar(seq) or 0)
            if lines:
                at = at or utc_now()
                rows = [
                    {"build_id": build_id, "seq": last + n, "stage": stage, "text": text, "at": at}
                    for n, (stage, text) in enumerate(lines, start=1)
                ]
                conn.execute(sa.insert(build_logs), rows)
        return last + len(lines)

    def read_log(self, build_id: str, after: int = 0, limit: int | None = None) -> list[LogLine]:
        """Lines with seq > after, in order."""
        query = sa.select(*(c for c in build_logs.c if c.name != "build_id"))
        query = query.where(build_logs.c.build_id == build_id, build_logs.c.seq > after)
        query = query.order_by(build_logs.c.seq).limit(limit)
        with self._engine.begin() as conn:
            return [LogLine(**row) for row in conn.execute(query).mappings()]

    def _move(
        self, build_id: str, when: BuildStatus, *where: Any, **values: Any
    ) -> BuildRecord | None:
        """_cas in a transaction of its own."""
        with self._writer.begin() as conn:
            return _cas(conn, build_id, when, *where, **values)
