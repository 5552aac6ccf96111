"""The build store's schema and how it talks to its database (SQLite or PostgreSQL): the
tables, the aware-UTC time type, the connection and transaction rules, the advisory locks.
`service.store` and `service.accounts` work on these."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.types import TypeDecorator

from service.records import ACTIVE

# PostgreSQL advisory lock keys (any two bigints of our own): one for creating the tables, one
# that serializes claims. Claims are rare (a worker asks when it has a free slot) and short.
SCHEMA_LOCK = 0x656E7663746C0001
CLAIM_LOCK = 0x656E7663746C0002
QUEUE_LOCK = 0x656E7663746C0003


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
is_active = builds.c.status.in_(ACTIVE)
# At most one active build per key and workspace, whichever process inserts it.
_only_active: dict[str, Any] = {"sqlite_where": is_active, "postgresql_where": is_active}
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

TOKEN_COLUMNS = [c for c in tokens.c if c.name != "secret_sha256"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # We emit BEGIN ourselves (see sqlite_begin): pysqlite's own transaction handling starts
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


def sqlite_begin(conn: Connection) -> None:
    # A writing transaction takes the write lock when it begins: a deferred one that has read
    # and then writes gets SQLITE_BUSY at once, without the busy timeout, when another
    # connection wrote in between. IMMEDIATE waits for the lock instead.
    write = conn.get_execution_options().get("envctl_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def advisory_lock(conn: Connection, key: int) -> None:
    """Hold a PostgreSQL lock until this transaction ends (SQLite's writers are serialized)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def count_rows(conn: Connection, *where: Any) -> int:
    return int(conn.scalar(sa.select(sa.func.count()).where(*where)) or 0)


def open_engine(url: str) -> tuple[Engine, Engine]:
    """The engine for an SQLAlchemy URL, and the same for writing transactions (SQLite: they
    take the write lock when they begin), with the tables created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(f"{url}: the SQLite store needs a file")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", sqlite_connect)
        sa.event.listen(engine, "begin", sqlite_begin)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    writer = engine.execution_options(envctl_write=True)
    with writer.begin() as conn:
        # Two processes starting together must not both create the tables.
        advisory_lock(conn, SCHEMA_LOCK)
        metadata.create_all(conn)
    return engine, writer
