"""The `envctl` command line.

Exit codes, one table for every command (`EXIT_CODES`):
    0 ok · 1 operation failed · 2 invalid input or usage · 3 a required service unreachable
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from api import views
from api.prewarm import prewarm, summary
from api.settings import Settings
from api.specfiles import load_spec
from builder.docker import DockerBuilder
from builder.errors import ChannelUnavailable, EngineUnavailable
from builder.pipeline import BuildConfig, DockerImageBuilder
from builder.resolve import Resolver
from hashing import (
    EnvctlError,
    EnvironmentSpec,
    EnvKey,
    ImageName,
    InvalidReference,
    SpecError,
    SpecFormat,
    compute_key,
    is_key,
    parse_image,
)
from registry import DigestResolver, RegistryUnavailable
from registry.auth import Credentials
from registry.base import ImageRef, Registry
from registry.errors import BaseImageNotFound
from registry.open import open_registry, open_tiers
from registry.store import StoreRegistry

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE = 0, 1, 2, 3
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (SpecError, EXIT_INVALID),
    (BaseImageNotFound, EXIT_INVALID),  # the spec names a base image that does not exist
    (RegistryUnavailable, EXIT_UNAVAILABLE),
    (EngineUnavailable, EXIT_UNAVAILABLE),
    (ChannelUnavailable, EXIT_UNAVAILABLE),
    (EnvctlError, EXIT_FAILED),
)

app = typer.Typer(
    name="envctl",
    help="Build environment images exactly once, keyed by their content.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

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


def exit_code(exc: Exception) -> int:
    """The CLI's exit code for an error, from the one table."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    raise exc


@dataclass
class _Context:
    settings: Settings
    resolver: DigestResolver
    closers: list[Callable[[], None]] = field(default_factory=list)
    _registry: Registry | None = None
    _workspace: StoreRegistry | None = None

    def registry(self) -> Registry:
        """The configured registries as one (opened on first use: hashing needs none)."""
        if self._registry is None:
            s = self.settings

            def opened(address: str, credentials: Credentials | None) -> StoreRegistry:
                registry = open_registry(
                    address,
                    credentials=credentials,
                    insecure=s.insecure_registries,
                    timeout=s.registry_timeout,
                )
                self.closers.append(registry.close)
                return registry

            workspace = opened(s.workspace_registry or s.embedded_registry, s.workspace_credentials)
            global_ = opened(s.global_registry, s.global_credentials) if s.global_registry else None
            self._workspace = workspace
            self._registry = open_tiers(workspace, global_)
        return self._registry

    def images(self) -> Resolver:
        """Lookup, and on a miss one build per key, on the configured engine and registries."""
        s = self.settings
        registry = self.registry()
        assert self._workspace is not None
        engine = DockerBuilder(
            base_url=s.docker_host or DEFAULT_DOCKER_HOST,
            timeout=s.build_timeout,
            memory=s.build_memory,
            cpus=s.build_cpus,
            network=s.build_network,  # type: ignore[arg-type]
        )
        self.closers.append(engine.close)
        config = BuildConfig(s.home, s.workspace_credentials)
        builder = DockerImageBuilder(self._workspace, engine, config)
        return Resolver(registry, builder, state=s.home)

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
        try:
            settings = Settings.from_env(os.environ)
        except EnvctlError as exc:
            raise typer.Exit(_fail(exc)) from None
        resolver = DigestResolver(
            insecure=settings.insecure_registries, timeout=settings.registry_timeout
        )
        c = _Context(settings, resolver, closers=[resolver.close])
        ctx.call_on_close(c.close)
        ctx.obj = c


def _keyed(
    c: _Context, path: str, *, resolve: bool, base_image: str | None, fmt: str | None
) -> tuple[EnvironmentSpec, EnvKey]:
    """Load a spec, pin its base image (unless told not to) and compute its key."""
    spec = load_spec(path, format=_format(fmt), default_base=_default_base(c, base_image))
    s = c.settings
    spec = spec.with_package_sources(
        channels=s.channels, pip_index_url=s.pip_index_url, pip_find_links=s.pip_find_links
    )
    if resolve:
        spec = spec.with_base_image(c.resolver.resolve(spec.base_image))
    return spec, compute_key(spec)


def _default_base(c: _Context, flag: str | None) -> ImageName | None:
    text = flag or c.settings.default_base_image
    if text is None:
        return None
    try:
        return parse_image(text)
    except InvalidReference as exc:
        source = "--base-image" if flag else "ENVCTL_BASE_IMAGE"
        raise SpecError(str(exc), source=source) from None


def _format(text: str | None) -> SpecFormat | None:
    if text is None or text in ("envctl", "conda", "azureml"):
        return text  # type: ignore[return-value]
    raise SpecError(f"unknown format {text!r}: use envctl, conda or azureml", source="--format")


def _fail(exc: EnvctlError) -> int:
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    return exit_code(exc)


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
    c = _context(ctx)
    code = EXIT_OK
    results: list[dict[str, Any]] = []
    for path in specs:
        try:
            spec, key = _keyed(c, path, resolve=not no_resolve, base_image=base_image, fmt=fmt)
        except EnvctlError as exc:
            failed = _fail(exc)  # every failure is printed; the first sets the exit code
            code = code or failed
            continue
        pinned = spec.base_image.pinned
        results.append({"spec": path, "key": key, "pinned": pinned})
        if not as_json:
            out.print(f"{key}  {escape(path)}", markup=True)
            if not pinned:
                err.print(f"note: {escape(path)}: key is unpinned (base image tag not resolved)")
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
    c = _context(ctx)
    try:
        left, left_key = _keyed(c, spec, resolve=not no_resolve, base_image=base_image, fmt=fmt)
        right = right_key = None
        if other is not None:
            right, right_key = _keyed(
                c, other, resolve=not no_resolve, base_image=base_image, fmt=fmt
            )
    except EnvctlError as exc:
        raise typer.Exit(_fail(exc)) from None
    if right is None:
        views.explain_one(out, spec, left, left_key, as_json)
    else:
        assert right_key is not None
        assert other is not None
        views.explain_two(out, (spec, left, left_key), (other, right, right_key), as_json)


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
    c = _context(ctx)
    try:
        env_spec, key = _keyed(c, spec, resolve=True, base_image=base_image, fmt=fmt)
        hit = c.images().resolve(
            env_spec,
            build=not no_build,
            force_rebuild=force_rebuild,
            on_event=functools.partial(views.progress, err),
        )
    except EnvctlError as exc:
        raise typer.Exit(_fail(exc)) from None
    if hit is None:
        err.print(f"not found: {key} is in no registry")
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        print(json.dumps(hit.as_json()))
    else:
        out.print(escape(hit.image))
        built = f" (build {hit.build_id})" if hit.build_id else ""
        err.print(f"{hit.source}{built}: {hit.digest}")


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
    c = _context(ctx)
    if to_global:
        s = c.settings
        if not s.global_registry:
            raise typer.Exit(
                _fail(SpecError("--global needs ENVCTL_GLOBAL_REGISTRY", source="--global"))
            )
        c = _Context(
            replace(
                s,
                workspace_registry=s.global_registry,
                workspace_credentials=s.global_credentials,
                global_registry=None,
                global_credentials=None,
            ),
            c.resolver,
        )
        ctx.call_on_close(c.close)
    try:
        resolver = c.images()
    except EnvctlError as exc:
        raise typer.Exit(_fail(exc)) from None

    def resolve_one(path: str) -> ImageRef:
        spec, _ = _keyed(c, path, resolve=True, base_image=base_image, fmt=fmt)
        hit = resolver.resolve(
            spec, on_event=lambda stage, message: views.prewarm_progress(err, path, stage, message)
        )
        assert hit is not None  # resolve with build=True finds or builds
        return hit

    outcomes = prewarm(specs, resolve_one, concurrency=concurrency)
    if as_json:
        print(
            json.dumps([o.as_json() for o in outcomes], indent=2 if sys.stdout.isatty() else None)
        )
    else:
        # CI logs are no terminal: rich would fold the table into 80 columns
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
    c = _context(ctx)
    try:
        key = EnvKey(target)
        if not is_key(target) or Path(target).exists():
            key = _keyed(c, target, resolve=True, base_image=base_image, fmt=fmt)[1]
        metadata = c.registry().get_metadata(key)
    except EnvctlError as exc:
        raise typer.Exit(_fail(exc)) from None
    if metadata is None:
        err.print(f"not found: no metadata for {key}")
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        print(json.dumps(metadata.as_json(), indent=2))
        return
    views.metadata(out, metadata)


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
