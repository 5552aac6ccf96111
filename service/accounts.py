"""The service's tenants in the build store: workspaces, their registry credentials, and
bearer tokens (kept as SHA-256 only)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from registry.auth import Credentials
from service.records import Token, Workspace
from service.tables import (
    TOKEN_COLUMNS,
    count_rows,
    tokens,
    utc_now,
    workspace_credentials,
    workspaces,
)


class WorkspaceExists(Exception):
    """`add_workspace` with a name already taken."""


class Accounts:
    """Workspaces, credentials and tokens; `BuildStore` is one (its engines are these)."""

    _engine: Engine
    _writer: Engine

    def add_workspace(self, name: str, registry: str) -> Workspace:
        """Create a workspace; WorkspaceExists when the name is taken."""
        workspace = Workspace(name=name, registry=registry, created_at=utc_now())
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
                        workspace=workspace, updated_at=utc_now(), **values
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
        token = Token(
            id=secrets.token_hex(6), workspace=workspace, admin=admin, created_at=utc_now()
        )
        with self._writer.begin() as conn:
            if workspace is not None and not count_rows(conn, workspaces.c.name == workspace):
                raise ValueError(f"no workspace {workspace!r}")
            row = asdict(token) | {"secret_sha256": _secret_hash(secret)}
            conn.execute(sa.insert(tokens).values(row))
        return token, secret

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by id; False when there is no such live token."""
        query = sa.update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
        with self._writer.begin() as conn:
            return conn.execute(query.values(revoked_at=utc_now())).rowcount == 1

    def list_tokens(self, workspace: str | None = None) -> list[Token]:
        """Tokens (of one workspace, or all), revoked ones included."""
        query = sa.select(*TOKEN_COLUMNS).order_by(tokens.c.created_at, tokens.c.id)
        if workspace is not None:
            query = query.where(tokens.c.workspace == workspace)
        with self._engine.begin() as conn:
            return [Token(**row) for row in conn.execute(query).mappings()]

    def authenticate(self, secret: str) -> Token | None:
        """The live token whose secret this is, or None."""
        query = sa.select(*TOKEN_COLUMNS).where(
            tokens.c.secret_sha256 == _secret_hash(secret), tokens.c.revoked_at.is_(None)
        )
        with self._engine.begin() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else Token(**row)


def _secret_hash(secret: str) -> str:
    # A fast hash is right here: the secrets are 256 random bits, so there is nothing to guess
    # and no dictionary to slow down (what bcrypt or argon2 are for), and it runs per request.
    return hashlib.sha256(secret.encode()).hexdigest()
