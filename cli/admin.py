"""`envctl serve`, `envctl worker`, `envctl workspace …` and `envctl token …`: running the
service and its build workers, and managing its tenants. These act on the database directly
(`ENVCTL_DATABASE_URL`), as an operator on the server's host does; runners only ever see the
HTTP API.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import sys
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from hashing.errors import SpecError

if TYPE_CHECKING:  # what the commands use is imported when they run: `envctl --help` is fast
    from rich.console import Console

    from registry.auth import Credentials
    from service.records import Workspace
    from service.settings import Settings
    from service.store import BuildStore

WORKSPACE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

workspace_app = typer.Typer(help="Workspaces: tenants with their own registry and tokens.")
token_app = typer.Typer(help="Bearer tokens of a workspace (or admin tokens).")


def add_workspace(
    store: BuildStore, settings: Settings, name: str, registry: str | None
) -> tuple[Workspace, str]:
    """Create a workspace and its first token; returns both (the token's secret only here)."""
    from client.errors import Conflict
    from registry.open import open_registry
    from service.store import WorkspaceExists

    if not WORKSPACE_NAME.fullmatch(name):
        raise SpecError(
            f"{name!r}: a workspace name is 1 to 63 lowercase letters, digits and dashes, "
            "starting with a letter or digit",
            source="NAME",
        )
    address = registry or default_registry(settings, name)
    open_registry(address).close()  # refuses a malformed address (InvalidRegistryAddress)
    try:
        workspace = store.add_workspace(name, address)
    except WorkspaceExists:
        raise Conflict(f"workspace {name!r} already exists") from None
    _, secret = store.add_token(name)
    return workspace, secret


def default_registry(settings: Settings, name: str) -> str:
    """A workspace's registry when none is given: its own namespace under the configured
    workspace registry (or under the embedded layout)."""
    base = settings.workspace_registry or settings.embedded_registry
    return f"{base.rstrip('/')}/{name}"


def register(app: typer.Typer) -> None:
    """Add `serve`, `worker`, `workspace` and `token` to the CLI (errors reach its boundary)."""
    app.add_typer(workspace_app, name="workspace")
    app.add_typer(token_app, name="token")
    app.command("serve")(serve_command)
    app.command("worker")(worker_command)


@functools.cache
def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _settings(ctx: typer.Context) -> Settings:
    from service.settings import Settings

    settings = getattr(ctx.find_root().obj, "settings", None)
    assert isinstance(settings, Settings)
    return settings


def _store(ctx: typer.Context) -> BuildStore:
    from service.store import BuildStore

    return BuildStore(_settings(ctx).database)


def serve_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (/metrics counts them).")
    ] = False,
) -> None:
    """Run the HTTP service (uvicorn) on the configured engine, registries and database."""
    import uvicorn

    from api.app import create_app
    from hashing import goparse

    goparse.isolate()  # a server parses hostile Dockerfiles: never in its own memory
    app = create_app(_settings(ctx))
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        timeout_graceful_shutdown=5,
    )


def worker_command(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, help="Builds run at once (default: ENVCTL_WORKERS)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address of --port.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(help="Serve /healthz, /readyz and /metrics on this port (default: none)."),
    ] = None,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            "--exit-when-idle",
            min=0.1,
            help="Exit (0) once no build ran here for this many seconds (a batch Job's worker).",
        ),
    ] = None,
) -> None:
    """Run builds and nothing else: claim queued builds from the database
    (ENVCTL_DATABASE_URL, shared with the servers) and run them on this host's engine
    (DOCKER_HOST), until SIGTERM or SIGINT, which put the builds running here back in the
    queue. Any number of workers may run, on any number of hosts."""
    from hashing import goparse
    from service.compose import build_core
    from service.settings import ServiceLimits

    settings = _settings(ctx)
    workers = concurrency if concurrency is not None else settings.workers
    if workers < 1:
        raise SpecError("a worker runs at least one build at a time", source="--concurrency")
    goparse.isolate()  # a worker reads hostile Dockerfiles: never in its own memory
    core = build_core(settings, limits=replace(ServiceLimits.of(settings), workers=workers))
    _log_envctl()
    if port is not None:
        import uvicorn

        from api.worker import create_worker_app

        server: uvicorn.Server | None = None

        def stop_server() -> None:
            if server is not None:
                server.should_exit = True  # as SIGTERM does, but the exit code stays 0

        app = create_worker_app(core, exit_when_idle=exit_when_idle, stop=stop_server)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        server.run()
        return
    from api.worker import start_workers

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    start_workers(core, exit_when_idle=exit_when_idle, stop=stop.set)
    try:
        stop.wait()
    finally:
        core.workers.stop()
        core.close()


def _log_envctl() -> None:
    """envctl's own log lines to stderr, from INFO up (uvicorn configures only its own
    loggers; the libraries' own stay at WARNING)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    envctl = logging.getLogger("envctl")
    envctl.addHandler(handler)
    envctl.setLevel(logging.INFO)


@workspace_app.command("add")
def workspace_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Workspace name (lowercase, digits, dashes).")],
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            help="HOST[:PORT]/NAMESPACE for its images (default: NAME under the workspace "
            "registry).",
        ),
    ] = None,
) -> None:
    """Create a workspace and print its first token (shown this once)."""
    settings = _settings(ctx)
    store = _store(ctx)
    try:
        workspace, secret = add_workspace(store, settings, name, registry)
    finally:
        store.close()
    _out().print(f"workspace {escape(workspace.name)}: {escape(workspace.registry)}", style="bold")
    _out().print("token (shown once; store it as ENVCTL_TOKEN):")
    print(secret)


@workspace_app.command("login")
def workspace_login(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The workspace.")],
    username: Annotated[str, typer.Option("--username", help="The registry user.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Give a workspace its own credentials for its registry: its pushes, lookups and the
    engine's pulls from that registry use them, and no other workspace's build does. The
    password is read from standard input, never from the command line."""
    store = _store(ctx)
    try:
        known = store.get_workspace(name) is not None
    finally:
        store.close()
    if not known:
        raise SpecError(f"no workspace {name!r}", source="NAME")
    if not password_stdin:
        raise SpecError(
            "give the password on standard input with --password-stdin", source="--password-stdin"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not username or not password:
        raise SpecError("a username and a password, both non-empty", source="--username")
    from registry.auth import Credentials

    _set_credentials(ctx, name, Credentials(username, password))
    _out().print(f"workspace {escape(name)}: credentials of {escape(username)!r} stored")


@workspace_app.command("logout")
def workspace_logout(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The workspace.")]
) -> None:
    """Take a workspace's own registry credentials away (it uses the service's again)."""
    _set_credentials(ctx, name, None)
    _out().print(f"workspace {escape(name)}: credentials removed")


def _set_credentials(ctx: typer.Context, name: str, credentials: Credentials | None) -> None:
    store = _store(ctx)
    try:
        store.set_credentials(name, credentials)
    except LookupError:
        raise SpecError(f"no workspace {name!r}", source="NAME") from None
    finally:
        store.close()


@workspace_app.command("list")
def workspace_list(ctx: typer.Context) -> None:
    """List workspaces and their registries."""
    store = _store(ctx)
    try:
        from rich.table import Table

        table = Table("workspace", "registry", "created")
        for w in store.list_workspaces():
            table.add_row(escape(w.name), escape(w.registry), w.created_at.isoformat())
    finally:
        store.close()
    _out().print(table)


@token_app.command("add")
def token_add(
    ctx: typer.Context,
    workspace: Annotated[
        str | None, typer.Argument(help="The workspace it reaches (none with --admin).")
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="Reaches every workspace and the global registry.")
    ] = False,
) -> None:
    """Create a token and print it (shown this once)."""
    if (workspace is None) != admin:
        raise SpecError("give a WORKSPACE, or --admin for an admin token", source="token add")
    store = _store(ctx)
    try:
        if workspace is not None and store.get_workspace(workspace) is None:
            raise SpecError(f"no workspace {workspace!r}", source="WORKSPACE")
        token, secret = store.add_token(workspace, admin=admin)
    finally:
        store.close()
    reach = "admin" if admin else f"workspace {workspace}"
    _out().print(f"token {token.id} ({escape(reach)}), shown once:")
    print(secret)


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    workspace: Annotated[str | None, typer.Argument(help="Only this workspace's.")] = None,
) -> None:
    """List tokens (ids and what they reach, never their secrets)."""
    store = _store(ctx)
    try:
        from rich.table import Table

        table = Table("token", "reaches", "created", "revoked")
        for t in store.list_tokens(workspace):
            reach = "admin" if t.admin else f"workspace {t.workspace}"
            revoked = t.revoked_at.isoformat() if t.revoked_at else ""
            table.add_row(t.id, escape(reach), t.created_at.isoformat(), revoked)
    finally:
        store.close()
    _out().print(table)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="The token's id.")]
) -> None:
    """Revoke a token by id: servers stop taking it within ENVCTL_TOKEN_TTL (1 s by default),
    and end its open log streams."""
    store = _store(ctx)
    try:
        revoked = store.revoke_token(token_id)
    finally:
        store.close()
    if not revoked:
        raise SpecError(f"no live token {token_id!r}", source="TOKEN_ID")
    _out().print(f"token {escape(token_id)} revoked")
