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
from collections.abc import Callable
from dataclasses import dataclass, field
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

if TYPE_CHECKING:
    from cli.local import LocalEnvironments
    from client.http import EnvctlClient
    from hashing import EnvironmentSpec, EnvKey, ImageName, SpecFormat
    from registry import DigestResolver
    from service.settings import Settings
    from specio.request import ResolveRequest


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


@dataclass
class _Context:
    settings: Settings
    closers: list[Callable[[], None]] = field(default_factory=list)
    _environments: EnvctlClient | LocalEnvironments | None = None
    _resolver: DigestResolver | None = None

    @property
    def resolver(self) -> DigestResolver:
        """Base tags to digests, asked of their registries (opened on first use)."""
        if self._resolver is None:
            from registry.digests import DigestResolver

            s = self.settings
            self._resolver = DigestResolver(
                insecure=s.insecure_registries, timeout=s.registry_timeout
            )
            self.closers.append(self._resolver.close)
        return self._resolver

    def environments(self) -> EnvctlClient | LocalEnvironments:
        """The service: the server at ENVCTL_URL, or an embedded one in this process."""
        if self._environments is None:
            s = self.settings
            if s.server_url:
                from client.http import EnvctlClient

                self._environments = EnvctlClient(
                    s.server_urls,
                    s.token,
                    workspace=s.workspace,
                    unreachable_after=s.unreachable_after,
                )
            else:
                from cli.local import LocalEnvironments

                self._environments = LocalEnvironments(s)
            self.closers.append(self._environments.close)
        return self._environments

    def close(self) -> None:
        """Close every connection this invocation opened."""
        for close in self.closers:
            close()


def _context(ctx: typer.Context) -> _Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, _Context)
    return obj


@app.callback()
def _root(ctx: typer.Context) -> None:
    if ctx.obj is None:  # tests may pass their own
        from service.settings import Settings

        c = _Context(Settings.from_env(os.environ))
        ctx.call_on_close(c.close)
        ctx.obj = c


def _keyed(
    c: _Context, path: str, *, resolve: bool, base_image: str | None, fmt: str | None
) -> tuple[EnvironmentSpec, EnvKey]:
    """Load a spec, pin its base image (unless told not to) and compute its key."""
    from hashing import compute_key
    from specio.files import load_spec

    spec = load_spec(path, format=_format(fmt), default_base=_default_base(c, base_image))
    s = c.settings
    spec = spec.with_package_sources(
        channels=s.channels, pip_index_url=s.pip_index_url, pip_find_links=s.pip_find_links
    )
    if resolve:
        spec = spec.with_images(c.resolver.resolve)
    return spec, compute_key(spec)


def _hash(
    c: _Context, path: str, *, resolve: bool, base_image: str | None, fmt: str | None
) -> tuple[str, bool]:
    """A spec's key and whether it is pinned: the server's (its package sources are part of
    the key) when there is one, else computed here."""
    if c.settings.server_url and resolve:
        answer = c.environments().hash(_request(c, path, base_image, fmt))
        return answer.key, answer.pinned
    spec, key = _keyed(c, path, resolve=resolve, base_image=base_image, fmt=fmt)
    return key, spec.pinned


def _default_base(c: _Context, flag: str | None) -> ImageName | None:
    from hashing import parse_image_at

    text = flag or c.settings.default_base_image
    if text is None:
        return None
    return parse_image_at(text, "--base-image" if flag else "ENVCTL_BASE_IMAGE")


def _format(text: str | None) -> SpecFormat | None:
    if text is None or text in ("envctl", "conda", "azureml"):
        return text  # type: ignore[return-value]
    from hashing import SpecError

    raise SpecError(f"unknown format {text!r}: use envctl, conda or azureml", source="--format")


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

    c = _context(ctx)
    code = EXIT_OK
    results: list[dict[str, Any]] = []
    for path in specs:
        try:
            key, pinned = _hash(c, path, resolve=not no_resolve, base_image=base_image, fmt=fmt)
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

    c = _context(ctx)
    left, left_key = _keyed(c, spec, resolve=not no_resolve, base_image=base_image, fmt=fmt)
    if other is None:
        views.explain_one(_out(), spec, left, left_key, as_json)
        return
    right, right_key = _keyed(c, other, resolve=not no_resolve, base_image=base_image, fmt=fmt)
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

    c = _context(ctx)
    request = _request(c, spec, base_image, fmt)
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


def _request(c: _Context, path: str, base_image: str | None, fmt: str | None) -> ResolveRequest:
    """A spec file and the files it names, as the service takes them."""
    from specio.request import request_from_file

    default = base_image or c.settings.default_base_image
    if default is not None:
        _default_base(c, base_image)  # a malformed --base-image is the flag's error
    return request_from_file(path, format=_format(fmt), base_image=default)


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

    c = _context(ctx)
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

    c = _context(ctx)
    envs = _prewarm_target(c, to_global)
    ctx.call_on_close(envs.close)

    def resolve_one(path: str) -> ImageRef:
        view = envs.resolve_image(
            _request(c, path, base_image, fmt),
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


def _prewarm_target(c: _Context, to_global: bool) -> EnvctlClient | LocalEnvironments:
    """Where prewarm builds: the workspace, or with --global the global registry (through a
    server, an admin token's; embedded, the global registry's credentials)."""
    s = c.settings
    if not to_global:
        return c.environments()
    from service.records import GLOBAL_WORKSPACE

    if s.server_url:
        from client.http import EnvctlClient

        return EnvctlClient(
            s.server_urls,
            s.token,
            workspace=GLOBAL_WORKSPACE,
            unreachable_after=s.unreachable_after,
        )
    if not s.global_registry:
        from hashing import SpecError

        raise SpecError("--global needs ENVCTL_GLOBAL_REGISTRY", source="--global")
    from datetime import UTC, datetime

    from cli.local import LocalEnvironments
    from service.records import Workspace

    target = Workspace(GLOBAL_WORKSPACE, s.global_registry, datetime.now(UTC))
    return LocalEnvironments(s, workspace=target)


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

    c = _context(ctx)
    envs = c.environments()
    key = target
    if not is_key(target) or Path(target).exists():
        key = envs.hash(_request(c, target, base_image, fmt)).key
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
