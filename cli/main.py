"""The `envctl` command line.

Commands raise; one boundary (`cli.boundary.EnvctlGroup`) turns every error into its message and
exit code, from the error's kind by one table (`client.errors.OUTCOMES`), whether the command ran
here or through a server:
    0 ok · 1 operation failed · 2 invalid input or usage · 3 a required service unreachable

What a command needs is imported when it runs, so `envctl --help` loads typer alone and a
client's commands load nothing of the server (`bench/cli` measures it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.boundary import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EnvctlGroup,
    exit_code,
    report,
)
from cli.boundary import err as _err
from cli.boundary import escape as _escape
from cli.boundary import out as _out
from cli.context import (
    Context,
    context_of,
    key_of,
    keyed,
    prewarm_target,
    request_of,
)

if TYPE_CHECKING:
    pass


__all__ = ["EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "EXIT_UNAVAILABLE", "app", "exit_code", "main"]

app = typer.Typer(
    cls=EnvctlGroup,
    name="envctl",
    help="Build environment images exactly once, keyed by their content.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
NoResolveOpt = Annotated[
    bool,
    typer.Option(
        "--no-resolve", help="Hash a base image tag as written (the key is then unpinned)."
    ),
]
BaseImageOpt = Annotated[
    str | None,
    typer.Option(
        "--base-image",
        help="Base image for specs that name none (conda files). Default: $ENVCTL_BASE_IMAGE.",
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="Spec format: envctl, conda or azureml (default: detected)."),
]


@app.callback()
def _root(ctx: typer.Context) -> None:
    if ctx.obj is None:  # tests may pass their own
        from service.settings import Settings

        c = Context(Settings.from_env(os.environ))
        ctx.call_on_close(c.close)
        ctx.obj = c


@app.command("hash")
def hash_command(
    ctx: typer.Context,
    specs: Annotated[list[str], typer.Argument(help="Spec files.", metavar="SPEC")],
    as_json: JsonOpt = False,
    no_resolve: NoResolveOpt = False,
    base_image: BaseImageOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Print the content key of each spec: `KEY  PATH`, one line per spec."""
    from hashing import EnvctlError

    c = context_of(ctx)
    code = EXIT_OK
    results: list[dict[str, Any]] = []
    for path in specs:
        try:
            key, pinned = key_of(c, path, resolve=not no_resolve, base_image=base_image, fmt=fmt)
        except EnvctlError as exc:  # every spec is tried; the first failure sets the exit code
            failed = report(exc)
            code = code or failed
            continue
        results.append({"spec": path, "key": key, "pinned": pinned})
        if not as_json:  # plain lines, for scripts: no console to load
            print(f"{key}  {path}")
            if not pinned:
                note = f"note: {path}: key is unpinned (base image tag not resolved)"
                print(note, file=sys.stderr)
    if as_json:
        print(json.dumps(results, indent=2 if sys.stdout.isatty() else None))
    raise typer.Exit(code)


@app.command("explain")
def explain_command(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    other: Annotated[str | None, typer.Argument(help="A second spec to compare with.")] = None,
    as_json: JsonOpt = False,
    no_resolve: NoResolveOpt = False,
    base_image: BaseImageOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Show the canonical inputs behind a key; with OTHER, exactly which inputs differ."""
    from cli import views

    c = context_of(ctx)
    left, left_key = keyed(c, spec, resolve=not no_resolve, base_image=base_image, fmt=fmt)
    if other is None:
        views.explain_one(_out(), spec, left, left_key, as_json)
        return
    right, right_key = keyed(c, other, resolve=not no_resolve, base_image=base_image, fmt=fmt)
    views.explain_two(_out(), (spec, left, left_key), (other, right, right_key), as_json)


@app.command("resolve")
def resolve_command(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    as_json: JsonOpt = False,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Only look the image up; a miss exits 1.")
    ] = False,
    force_rebuild: Annotated[
        bool,
        typer.Option("--force-rebuild", help="Build even on a hit or a remembered failure."),
    ] = False,
    base_image: BaseImageOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """The environment's image: from the workspace registry, else the global one (copied into
    the workspace), else built once. Prints the image reference; progress goes to stderr."""
    from cli import views
    from client.models import ImageView

    c = context_of(ctx)
    request = request_of(c, spec, base_image, fmt)
    envs = c.environments()
    if no_build:
        answer = envs.resolve(request, build=False, force_rebuild=force_rebuild)
        assert isinstance(answer, ImageView)
        image = answer
    else:
        with views.LiveProgress(_err(), spec) as progress:
            image = envs.resolve_image(request, force_rebuild=force_rebuild, on_log=progress)
    if as_json:
        print(image.model_dump_json(exclude_none=True))
    else:
        _out().print(_escape(image.image))
        built = f" (build {image.build_id})" if image.build_id else ""
        _err().print(f"{image.source}{built}: {image.digest}")


@app.command("logs")
def logs_command(
    ctx: typer.Context,
    build_id: Annotated[str, typer.Argument(help="The build's id (from resolve or prewarm).")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the log until the build is over.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a build's log (so far, or live with --follow), then its status; exit 1 if it
    failed."""
    from cli import views
    from client.http import failure
    from client.models import BuildView

    c = context_of(ctx)
    end: BuildView | None = None
    for item in c.environments().logs(build_id, follow=follow):
        if isinstance(item, BuildView):
            end = item
        elif as_json:
            print(item.model_dump_json())
        else:
            views.progress(_out(), item.stage, item.text)
    assert end is not None
    if as_json:
        print(end.model_dump_json(exclude_none=True))
    else:
        views.build_status(_err(), end)
    raise typer.Exit(exit_code(failure(end)) if end.status == "failed" else EXIT_OK)


@app.command("prewarm")
def prewarm_command(
    ctx: typer.Context,
    specs: Annotated[list[str], typer.Argument(help="Spec files.", metavar="SPEC")],
    concurrency: Annotated[int, typer.Option(help="Specs resolved at the same time.", min=1)] = 4,
    to_global: Annotated[
        bool,
        typer.Option("--global", help="Build into the global registry (needs its credentials)."),
    ] = False,
    as_json: JsonOpt = False,
    base_image: BaseImageOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Resolve many specs at once (hit, promote or build), then print a summary; exit 1 if
    any failed. CI runs it so that images exist before a job waits for them."""
    from rich.console import Console

    from cli import views
    from cli.prewarm import prewarm, summary
    from hashing import EnvKey
    from registry.base import ImageRef

    c = context_of(ctx)
    envs = prewarm_target(c, to_global)
    ctx.call_on_close(envs.close)

    def resolve_one(path: str) -> ImageRef:
        view = envs.resolve_image(
            request_of(c, path, base_image, fmt),
            on_log=lambda event: views.prewarm_progress(_err(), path, event.stage, event.text),
        )
        return ImageRef(EnvKey(view.key), view.image, view.digest, view.source, view.build_id)

    outcomes = prewarm(specs, resolve_one, concurrency=concurrency)
    if as_json:
        print(
            json.dumps([o.as_json() for o in outcomes], indent=2 if sys.stdout.isatty() else None)
        )
    else:
        # CI logs are no terminal: rich would fold the table into 80 columns
        out = _out()
        wide = out if out.is_terminal else Console(file=sys.stdout, width=200, highlight=False)
        wide.print(summary(outcomes))
    raise typer.Exit(EXIT_FAILED if any(o.error is not None for o in outcomes) else EXIT_OK)


@app.command("inspect")
def inspect_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A key, or a spec file.", metavar="KEY|SPEC")],
    as_json: JsonOpt = False,
    base_image: BaseImageOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Show what is stored with an environment's image: spec, lock, Dockerfile, log, facts."""
    from cli import views
    from client.errors import NotFound
    from hashing import is_key
    from registry.metadata import EnvMetadata

    c = context_of(ctx)
    envs = c.environments()
    key = target
    if not is_key(target) or Path(target).exists():
        key = envs.hash(request_of(c, target, base_image, fmt)).key
    try:
        metadata = EnvMetadata.from_json(envs.environment(key))
    except NotFound:
        raise NotFound(f"no metadata for {key}") from None
    if as_json:
        print(json.dumps(metadata.as_json(), indent=2))
        return
    views.metadata(_out(), metadata)


def _register_admin() -> None:
    from cli import admin

    admin.register(app)


_register_admin()


def main() -> None:
    """Entry point of the `envctl` console script."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    # Leave without interpreter finalization: py-rattler's runtime threads can still be winding
    # down after a failed fetch, and finalizing under them aborts the process (exit 134),
    # hiding envctl's own exit code. Everything envctl opened is closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
