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

import hashlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from registry.auth import Credentials
from service.records import (
    ACTIVE,
    BuildRecord,
    BuildStatus,
    FailureRecord,
    LogLine,
    Token,
    Workspace,
)

# PostgreSQL advisory lock keys (any two bigints of our own): one for creating the tables, one
# that serializes claims. Claims are rare (a worker asks when it has a free slot) and short.
SCHEMA_LOCK = 0x656E7663746C0001
CLAIM_LOCK = 0x656E7663746C0002
QUEUE_LOCK = 0x656E7663746C0003
OPEN_RETRIES = 10  # open_build: the active build it collided with may finish before it is read


class QueueLimit(Exception):
    """`open_build` would queue a build beyond the workspace's `max_queued`."""

    def __init__(self, queued: int) -> None:
        self.queued = queued
        super().__init__(f"{queued} builds queued")


class WorkspaceExists(Exception):
    """`add_workspace` with a name already taken."""


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes stored as UTC: naive UTC text in SQLite, timestamptz in PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times")
        value = value.astimezone(UTC)
        # SQLite's text format has no offset: keep UTC, drop the tzinfo it would ignore anyway.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("registry", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# A workspace's own credentials for its registry, when the operator gave it some: its pushes,
# its lookups and the engine's pulls from that registry use them, and no other workspace's
# build ever does. Kept as the Docker config keeps them: protect the database as you would it.
workspace_credentials = sa.Table(
    "workspace_credentials",
    metadata,
    sa.Column("workspace", sa.Text, sa.ForeignKey("workspaces.name"), primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("password", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("workspace", sa.Text, sa.ForeignKey("workspaces.name"), nullable=True),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
)

# No foreign key on builds.workspace: prewarm builds are recorded under GLOBAL_WORKSPACE,
# which is not a workspace row.
builds = sa.Table(
    "builds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("queued_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("image", sa.Text),
    sa.Column("digest", sa.Text),
    sa.Column("source", sa.Text),
    sa.Column("failure_class", sa.Text),
    sa.Column("message", sa.Text),
    sa.Column("owner", sa.Text),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')"),
)
_active = builds.c.status.in_(ACTIVE)
# At most one active build per key and workspace, whichever process inserts it.
_only_active: dict[str, Any] = {"sqlite_where": _active, "postgresql_where": _active}
sa.Index("builds_one_active_key", builds.c.workspace, builds.c["key"], unique=True, **_only_active)
sa.Index("builds_queue", builds.c.status, builds.c.queued_at, builds.c.id)
sa.Index("builds_key_history", builds.c.workspace, builds.c["key"], builds.c.queued_at)

# The files of a resolve request, by the sha256 of their bytes (a tenant cannot make its file
# collide with another's), kept while a queued or running build references them: a build row
# holds its request without the files' bytes, and build_files says which it needs. A file no
# build references is swept once it has gone unused for a while (`sweep_files`).
request_files = sa.Table(
    "request_files",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=False),
)

build_files = sa.Table(
    "build_files",
    metadata,
    sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id"), primary_key=True),
    sa.Column("sha256", sa.String(64), sa.ForeignKey("request_files.sha256"), primary_key=True),
)
sa.Index("build_files_by_file", build_files.c.sha256)

build_logs = sa.Table(
    "build_logs",
    metadata,
    sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)

# A key's deterministic failure (an unsolvable spec, a failing step), answered at once to the
# next resolve of that key in that workspace until a forced rebuild forgets it. One row per key:
# a newer failure replaces the older.
failures = sa.Table(
    "failures",
    metadata,
    sa.Column("workspace", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("build_id", sa.Text),
    sa.Column("log_tail", sa.Text, nullable=False),
    sa.Column("failed_at", UtcDateTime, nullable=False),
)

_TOKEN_COLUMNS = [c for c in tokens.c if c.name != "secret_sha256"]


def _now() -> datetime:
    return datetime.now(UTC)


def _secret_hash(secret: str) -> str:
    # A fast hash is right here: the secrets are 256 random bits, so there is nothing to guess
    # and no dictionary to slow down (what bcrypt or argon2 are for), and it runs per request.
    return hashlib.sha256(secret.encode()).hexdigest()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # We emit BEGIN ourselves (see _sqlite_begin): pysqlite's own transaction handling starts
    # transactions late (not before a SELECT) and never as IMMEDIATE.
    dbapi_connection.isolation_level = None
    # busy_timeout first: switching a new file to WAL needs a lock another process may hold.
    # WAL lets readers run beside the writer; synchronous=NORMAL is durable enough under WAL.
    for pragma in (
        "busy_timeout=30000",
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=ON",
    ):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def _sqlite_begin(conn: Connection) -> None:
    # A writing transaction takes the write lock when it begins: a deferred one that has read
    # and then writes gets SQLITE_BUSY at once, without the busy timeout, when another
    # connection wrote in between. IMMEDIATE waits for the lock instead.
    write = conn.get_execution_options().get("envctl_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _advisory_lock(conn: Connection, key: int) -> None:
    """Hold a PostgreSQL lock until this transaction ends (SQLite's writers are serialized)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def _count(conn: Connection, *where: Any) -> int:
    return int(conn.scalar(sa.select(sa.func.count()).where(*where)) or 0)


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
    now = _now()
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


class BuildStore:
    """Workspaces, tokens, builds and logs. Thread-safe; every method is one transaction."""

    def __init__(self, url: str) -> None:
        """Open (and create the tables of) the database at an SQLAlchemy URL."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ValueError(f"{url}: the SQLite store needs a file")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = sa.create_engine(parsed, pool_pre_ping=True)
        self._engine = engine
        self._writer = engine.execution_options(envctl_write=True)
        with self._writer.begin() as conn:
            # Two processes starting together must not both create the tables.
            _advisory_lock(conn, SCHEMA_LOCK)
            metadata.create_all(conn)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self._engine.dispose()

    # workspaces and tokens
    def add_workspace(self, name: str, registry: str) -> Workspace:
        """Create a workspace; WorkspaceExists when the name is taken."""
        workspace = Workspace(name=name, registry=registry, created_at=_now())
        try:
            with self._writer.begin() as conn:
                conn.execute(sa.insert(workspaces).values(asdict(workspace)))
        except IntegrityError as e:
            raise WorkspaceExists(name) from e
        return workspace

    def get_workspace(self, name: str) -> Workspace | None:
        """The workspace called `name`, if any."""
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(workspaces).where(workspaces.c.name == name)).first()
        return None if row is None else Workspace(**row._mapping)

    def list_workspaces(self) -> list[Workspace]:
        """Every workspace, by name."""
        with self._engine.begin() as conn:
            rows = conn.execute(sa.select(workspaces).order_by(workspaces.c.name)).mappings()
            return [Workspace(**row) for row in rows]

    def set_credentials(self, workspace: str, credentials: Credentials | None) -> None:
        """Give a workspace its own registry credentials (None: take them away). LookupError
        for an unknown workspace."""
        with self._writer.begin() as conn:
            if (
                conn.execute(
                    sa.select(workspaces.c.name).where(workspaces.c.name == workspace)
                ).first()
                is None
            ):
                raise LookupError(f"no workspace {workspace!r}")
            conn.execute(
                sa.delete(workspace_credentials).where(
                    workspace_credentials.c.workspace == workspace
                )
            )
            if credentials is not None:
                values = {"username": credentials.username, "password": credentials.password}
                conn.execute(
                    sa.insert(workspace_credentials).values(
                        workspace=workspace, updated_at=_now(), **values
                    )
                )

    def get_credentials(self, workspace: str) -> Credentials | None:
        """A workspace's own registry credentials, if it has any."""
        query = sa.select(workspace_credentials.c.username, workspace_credentials.c.password)
        query = query.where(workspace_credentials.c.workspace == workspace)
        with self._engine.begin() as conn:
            row = conn.execute(query).first()
        return None if row is None else Credentials(row.username, row.password)

    def add_token(self, workspace: str | None, *, admin: bool = False) -> tuple[Token, str]:
        """A new token for `workspace` (None with admin=True): its record and its secret, which
        is returned this once and stored only as its SHA-256.

        ValueError for a workspace token without a workspace, an admin token with one, or a
        workspace that does not exist."""
        if admin != (workspace is None):
            raise ValueError("an admin token has no workspace, and any other token has one")
        secret = "envctl_" + secrets.token_urlsafe(32)
        # The id is what users see and revoke by: short, and no help in guessing the secret.
        token = Token(id=secrets.token_hex(6), workspace=workspace, admin=admin, created_at=_now())
        with self._writer.begin() as conn:
            if workspace is not None and not _count(conn, workspaces.c.name == workspace):
                raise ValueError(f"no workspace {workspace!r}")
            row = asdict(token) | {"secret_sha256": _secret_hash(secret)}
            conn.execute(sa.insert(tokens).values(row))
        return token, secret

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by id; False when there is no such live token."""
        query = sa.update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
        with self._writer.begin() as conn:
            return conn.execute(query.values(revoked_at=_now())).rowcount == 1

    def list_tokens(self, workspace: str | None = None) -> list[Token]:
        """Tokens (of one workspace, or all), revoked ones included."""
        query = sa.select(*_TOKEN_COLUMNS).order_by(tokens.c.created_at, tokens.c.id)
        if workspace is not None:
            query = query.where(tokens.c.workspace == workspace)
        with self._engine.begin() as conn:
            return [Token(**row) for row in conn.execute(query).mappings()]

    def authenticate(self, secret: str) -> Token | None:
        """The live token whose secret this is, or None."""
        query = sa.select(*_TOKEN_COLUMNS).where(
            tokens.c.secret_sha256 == _secret_hash(secret), tokens.c.revoked_at.is_(None)
        )
        with self._engine.begin() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else Token(**row)

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
        active = sa.select(builds).where(_of_key(workspace, key), _active)
        queued = (builds.c.workspace == workspace, builds.c.status == "queued")
        for _ in range(OPEN_RETRIES):
            record = BuildRecord(uuid.uuid4().hex[:16], workspace, key, "queued", request, _now())
            try:
                with self._writer.begin() as conn:
                    row = conn.execute(active).mappings().first()
                    if row is not None:
                        return BuildRecord(**row), False
                    if max_queued is not None:
                        _advisory_lock(conn, QUEUE_LOCK)  # the count holds until we insert
                        count = _count(conn, *queued)
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
            request_files.c.used_at < _now() - timedelta(seconds=unused_for),
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
            return _count(conn, builds.c.status == "queued", earlier) + 1

    def queue_length(self) -> int:
        """Queued builds across every workspace."""
        with self._engine.begin() as conn:
            return _count(conn, builds.c.status == "queued")

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
            _advisory_lock(conn, CLAIM_LOCK)
            while (build_id := conn.scalar(oldest)) is not None:
                now = _now()
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
        now = _now()
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
        lease_until = _now() + timedelta(seconds=lease_seconds)
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
            where.append(builds.c.lease_until < _now())
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
                conn, build_id, "running", builds.c.owner == owner, finished_at=_now(), **outcome
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
                at = at or _now()
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
