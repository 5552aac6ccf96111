"""A build, start to finish: solve, make the layers, write the image, run the steps, register.

    solve (py-rattler) → one layer per conda package (builder.envlayers, cached per host)
    resolve (uv) → one layer per wheel, installed on the host for the image's python
    the image: the base by digest, those layers, conda-meta on top, a config envctl writes,
      sent to the workspace registry with only the missing layers (builder.assemble); no engine
    docker steps, when the spec has some: on the engine, FROM that image by digest, then pushed
    verify the digest → metadata

Nothing of the tenant's runs on the host: packages are linked and wheels unpacked by libraries,
link scripts never run. Only the docker steps run, on the engine, with every limit of
builder.docker. An environment without steps never touches the engine, except to ask a base
image's python where wheels go (once per base digest, kept in ENVCTL_HOME).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import envlayers, pip
from builder.archive import export_archive, import_archive
from builder.assemble import ImageSettings, assemble, layer_count, platform_manifest
from builder.conda import CondaLock, solve
from builder.docker import DockerBuilder
from builder.envlayers import (
    ASK_PYTHON,
    ENV_PREFIX,
    LAYER_BUDGET,
    MAX_LAYERS,
    PackageLayer,
    PythonScheme,
    conda_layers,
    conda_meta_layer,
    finish,
    python_scheme,
    remove_tree,
    wheel_layers,
)
from builder.errors import BuildError, DiskFull, StepFailed, disk_full
from builder.layer import Layer
from builder.layercache import LayerCache
from builder.render import image_labels
from builder.resolve import OnEvent
from hashing import (
    EnvironmentSpec,
    EnvKey,
    ImageName,
    InvalidReference,
    canonical_json,
    normalize_platform,
    parse_image,
)
from registry.auth import Credentials
from registry.base import ImageRef, Manifest
from registry.metadata import EnvMetadata
from registry.oci import OciRegistry
from registry.store import StoreRegistry
from specio.context import copy_context

VERSION = "0.1.0"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BuildConfig:
    """Where a build keeps its files, and where it finds packages."""

    home: Path
    credentials: Credentials | None = None
    # the registry hosts whose credentials the engine may pull with (None: every one the
    # Docker config holds, as for a user's own CLI); a service gives a workspace's build only
    # its own, the global registry's and the operator's allowed ones
    pull_registries: tuple[str, ...] | None = None
    # credentials the engine pulls with from these hosts, in place of the Docker config's: a
    # workspace's own for its registry (service.store.workspace_credentials)
    pull_credentials: Mapping[str, Credentials] = field(default_factory=dict)
    # raises unless the workspace may read an image with exactly those credentials: the engine
    # serves an image any earlier build pulled without asking the registry again, so a build
    # of a shared service proves its access to every image it reads before the engine runs
    confirm_read: Callable[[ImageName], None] | None = None
    # hosts spoken to over plain HTTP (loopback ones always are)
    insecure: tuple[str, ...] = ()
    # the credentials envctl itself reads a base image with, by host (None: pull_credentials)
    base_credentials: Callable[[str], Credentials | None] | None = None

    def credentials_for(self, host: str) -> Credentials | None:
        """What envctl reads images on `host` with: what the engine would pull with."""
        if self.base_credentials is not None:
            return self.base_credentials(host)
        return self.pull_credentials.get(host)


@dataclass(frozen=True)
class _Locks:
    """What a build was installed from: the conda lock and the pip lock, each if any."""

    conda: str | None = None
    pip: str | None = None


@dataclass
class _Made:
    """The environment's layers in image order, and how to read each."""

    layers: list[Layer] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # digest → cache key
    locks: _Locks = field(default_factory=_Locks)
    conda: bool = False
    made: int = 0


class ImageBuilder:
    """Builds a key's image as layers envctl writes itself and registers it in the workspace
    registry; the docker steps, if any, run on the engine on top of that image."""

    def __init__(
        self, workspace: StoreRegistry, engine: DockerBuilder, config: BuildConfig
    ) -> None:
        self._workspace = workspace
        self._engine = engine
        self._config = config
        self._cache = LayerCache(config.home / "layers")
        # the engine pushes to a registry it can reach; into an OCI layout it saves instead
        self._pushes = isinstance(workspace, OciRegistry)

    def build(
        self, spec: EnvironmentSpec, key: EnvKey, build_id: str, on_event: OnEvent
    ) -> ImageRef:
        """Build and register `spec`'s image; the workspace's ImageRef with `build_id`."""
        started = time.monotonic()
        builds = self._config.home / "builds"
        _sweep(builds, older_than=self._engine.timeout + 3600)
        _sweep(self._cache.root / "tmp", older_than=self._engine.timeout + 3600)
        folder = builds / build_id
        log: list[str] = []

        def on_log(line: str) -> None:
            log.append(line)
            on_event("log", line)

        stage: str | None = None
        tag: str | None = None
        try:
            if self._config.confirm_read is not None:  # a workspace's build on a shared engine
                for image in _images_read(spec):
                    self._config.confirm_read(image)
            base_image = spec.base_image
            if base_image.digest is None:
                raise BuildError(f"the base image {base_image} is not pinned", build_id=build_id)
            platform = normalize_platform(spec.platform)
            with self._base_registry(base_image) as base:
                below = platform_manifest(base, base_image.digest, platform)
                steps = sum(s.instruction in ("RUN", "COPY", "ADD") for s in spec.steps())
                room = MAX_LAYERS - layer_count(below) - steps
                if room < 2 * envlayers.BUCKETS + 1:
                    raise StepFailed(
                        f"the base image has {layer_count(below)} layers and the steps make "
                        f"{steps}: with the environment's, the image would pass {MAX_LAYERS} "
                        "layers, more than engines run; flatten the base or merge steps",
                        build_id=build_id,
                    )
                budget = min(LAYER_BUDGET, room)
                made = self._environment(spec, base_image, folder, budget, on_event)
                settings = _settings(spec, key, made)
                sent: list[Layer] = []
                image_tag = None if spec.has_steps else key
                on_event("push", f"writing {key} to {self._workspace.address}")
                manifest = assemble(
                    base, base_image.digest, self._workspace, image_tag, made.layers,
                    functools.partial(self._read, made), settings, platform,
                    below=below, on_send=sent.append,
                )  # fmt: skip
            total = sum(layer.size for layer in made.layers)
            on_log(
                f"envctl: wrote {len(made.layers)} layers ({made.made} made here), sent "
                f"{len(sent)} of them ({_size(sum(layer.size for layer in sent))} of "
                f"{_size(total)}), {time.monotonic() - started:.2f} s into the build"
            )
            dockerfile = None
            digest = manifest.digest
            if spec.has_steps:
                stage, dockerfile = self._steps(spec, key, build_id, folder, manifest, on_log)
                tag = self._workspace.reference(key) if self._pushes else f"envctl-local/env:{key}"
                on_event("push", f"pushing {key} to {self._workspace.address}")
                digest = self._register(tag, key, folder, on_log)
            found = self._workspace.resolve(key)  # asked, not remembered: it was just written
            if found is None or found.digest != digest:
                raise BuildError(
                    f"the registry holds {found and found.digest} for {key}, not the written "
                    f"{digest}",
                    build_id=build_id,
                )
            self._workspace.forget(key)  # a --force-rebuild replaces what this process saw
            hit = ImageRef(key, self._workspace.reference(key), found.digest)
            facts = {
                "build_id": build_id,
                "builder_version": VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "duration_seconds": round(time.monotonic() - started, 3),
                "layers": len(made.layers),
                "layers_sent": len(sent),
            }
            metadata = _metadata(spec, key, made.locks, log, facts, dockerfile)
            self._workspace.put_metadata(key, metadata)
            return replace(hit, build_id=build_id)
        except (BuildError, OSError) as exc:
            # a full disk shows as whatever the tool that hit it says (rattler: "EOF while
            # parsing a value"): said for what it is, and never remembered as the key's failure
            if disk_full(self._config.home):
                raise DiskFull(build_id=build_id) from exc
            raise
        finally:
            # the registry has the image, or nothing does: the engine's copies only take disk
            for name in (tag, stage):
                if name is not None:
                    self._engine.remove(name)
            remove_tree(folder)

    def _environment(
        self,
        spec: EnvironmentSpec,
        base_image: ImageName,
        folder: Path,
        budget: int,
        on_event: OnEvent,
    ) -> _Made:
        """Solve and resolve `spec`'s packages and make (or find) their layers."""
        made = _Made()
        conda = spec.conda
        packages: list[PackageLayer] = []
        lock: CondaLock | None = None
        work = self._cache.work / f"build-{uuid.uuid4().hex}"
        before = _count(self._cache)
        try:
            if conda is not None and conda.dependencies:
                # the spec's channels are the ones to use: the operator's sources, if any,
                # were put into the spec before it was keyed (with_package_sources)
                on_event(
                    "solve",
                    f"solving {len(conda.dependencies)} specs on {', '.join(conda.channels)}",
                )
                cache = self._config.home / "conda"
                lock = solve(conda, platform=spec.platform, channels=None, cache_dir=cache)
                made.locks = _Locks(conda=lock.text)
                on_event("install", f"installing {len(lock.packages)} conda packages, a layer each")
                packages += conda_layers(
                    lock, cache=self._cache, packages=cache / "pkgs", work=work
                )
                made.conda = True
            if conda is not None and conda.pip:
                found = None if lock is None else python_scheme(lock)
                # without a python in the environment, the base image's own python3
                scheme = found or self._base_python(base_image)
                on_event(
                    "solve",
                    f"resolving {len(conda.pip)} pip requirements for python {scheme.version}",
                )
                pip_lock = pip.resolve(
                    conda.pip,
                    conda.pip_arguments,
                    python_version=scheme.version,
                    platform=spec.platform,
                    work=folder / "pip",
                    cache=self._config.home / "uv",
                )
                made.locks = replace(made.locks, pip=pip_lock.text)
                on_event("install", f"installing {len(pip_lock.wheels)} wheels, a layer each")
                sources = conda.pip_sources
                packages += wheel_layers(
                    pip_lock.wheels,
                    fetch=functools.partial(pip.fetch, sources=sources),
                    scheme=scheme,
                    sources=sources,
                    cache=self._cache,
                    work=work,
                )
            ordered = finish(packages, budget=budget, cache=self._cache)
            made.layers = [package.layer for package in ordered]
            made.keys = {package.layer.digest: package.key for package in ordered}
            if lock is not None:
                folder.mkdir(parents=True, exist_ok=True)
                top = conda_meta_layer(lock, packages, folder / "conda-meta.tar.gz", work)
                made.layers.append(top)
        finally:
            remove_tree(work)
        # the top layer is made for every build: it describes this environment alone
        made.made = _count(self._cache) - before + (lock is not None)
        return made

    def _read(self, made: _Made, layer: Layer) -> Iterator[bytes]:
        key = made.keys.get(layer.digest)
        if key is not None:
            return self._cache.read(key, layer)
        return _chunks(layer.path)

    def _base_python(self, base_image: ImageName) -> PythonScheme:
        """Where the base image's python3 installs wheels: asked once per base digest."""
        digest = str(base_image.digest)
        saved = self._config.home / "pythons" / f"{digest.replace(':', '-')}.json"
        with contextlib.suppress(OSError, ValueError):
            return PythonScheme.from_json(saved.read_text())
        answer = self._engine.run_python(f"{base_image.name}@{digest}", ASK_PYTHON)
        try:
            scheme = PythonScheme.from_json(answer.splitlines()[-1] if answer else "")
        except ValueError as exc:
            raise StepFailed(f"the base image's python3 gave no usable scheme: {exc}") from None
        saved.parent.mkdir(parents=True, exist_ok=True)
        partial = saved.with_name(f"{saved.name}.{uuid.uuid4().hex}")
        partial.write_text(scheme.as_json())
        os.replace(partial, saved)  # kept only once checked
        return scheme

    @contextlib.contextmanager
    def _base_registry(self, image: ImageName) -> Iterator[StoreRegistry]:
        """The base image's repository, read with what the engine would pull it with; the
        workspace itself when the base lives there (an OCI layout's own images)."""
        registry = OciRegistry(
            image.domain,
            repository=image.repository,
            credentials=self._config.credentials_for(image.domain),
            insecure=self._config.insecure,
        )
        try:
            yield registry
        finally:
            registry.close()

    def _steps(
        self,
        spec: EnvironmentSpec,
        key: EnvKey,
        build_id: str,
        folder: Path,
        manifest: Manifest,
        on_log: Callable[[str], None],
    ) -> tuple[str, str]:
        """Run the docker steps on the engine FROM the written image; the tag the engine built
        (to untag) and the steps' Dockerfile."""
        if self._pushes:  # the engine pulls it from the workspace registry, by digest
            stage = f"envctl-build/{key}:{build_id}"
            source = f"{self._workspace.reference(key).rsplit(':', 1)[0]}@{manifest.digest}"
        else:  # an OCI layout: the engine cannot reach it, so it gets the image by a load
            stage = f"envctl-build/{key}:{build_id}"
            folder.mkdir(parents=True, exist_ok=True)
            archive = folder / "environment.tar"
            export_archive(self._workspace, manifest.digest, stage, archive)
            self._engine.load(archive)
            archive.unlink()
            source = stage
        dockerfile = _steps_context(spec, source, folder / "steps", build_id)
        # the host's copy has no setuid, setgid or sticky bits: the image gets the listed modes
        modes = {e.path: e.mode for e in spec.context.entries} if spec.context else {}
        tag = self._workspace.reference(key) if self._pushes else f"envctl-local/env:{key}"
        self._engine.build(
            folder / "steps",
            tag=tag,
            labels={},
            on_log=on_log,
            build_id=build_id,
            dockerfile=dockerfile,
            modes=modes,
            registries=self._config.pull_registries,
            credentials=self._config.pull_credentials,
        )
        text = (folder / "steps" / dockerfile).read_text()
        return stage, text

    def _register(self, tag: str, key: EnvKey, folder: Path, on_log: Callable[[str], None]) -> str:
        """Put the built image in the workspace registry (the tag last); its manifest digest."""
        if self._pushes:  # mounting what it can
            return self._engine.push(tag, auth=self._auth(), on_log=on_log)
        archive = folder / "image.tar"  # a registry the engine cannot reach (an OCI layout)
        self._engine.save(tag, archive)
        return import_archive(archive, self._workspace, key)

    def _auth(self) -> dict[str, str] | None:
        credentials = self._config.credentials
        if credentials is None:
            return None
        return {"username": credentials.username, "password": credentials.password}


def _settings(spec: EnvironmentSpec, key: EnvKey, made: _Made) -> ImageSettings:
    """The config's variables (the environment's PATH first, then the spec's) and labels."""
    env: dict[str, str] = {}
    if made.conda:  # what `conda activate` sets that matters to programs
        env |= {"PATH": f"{ENV_PREFIX}/bin:$PATH", "CONDA_PREFIX": ENV_PREFIX}
    env |= dict(spec.variables)
    labels = image_labels(spec, key, made.locks.conda, made.locks.pip, version=VERSION)
    return ImageSettings(env=env, labels=dict(labels))


def _count(cache: LayerCache) -> int:
    keys = cache.root / "keys"
    try:
        return sum(1 for _ in os.scandir(keys))
    except OSError:
        return 0


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _size(n: int) -> str:
    """`2.1 kB`, `310.4 MB`: bytes as a person reads them (SI units, as registries show)."""
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if n < scale * 1000:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e9:.2f} GB"


def _metadata(
    spec: EnvironmentSpec,
    key: EnvKey,
    locks: _Locks,
    log: list[str],
    facts: dict[str, object],
    dockerfile: str | None,
) -> EnvMetadata:
    """What is stored with the image: the canonical spec, the locks, the steps' Dockerfile."""
    return EnvMetadata(
        key=key,
        spec_json=canonical_json(spec),
        lock=locks.conda,
        pip_lock=locks.pip,
        dockerfile=dockerfile,
        build_log="\n".join(log) + "\n",
        facts=facts,
    )


def _sweep(builds: Path, *, older_than: float) -> None:
    """Remove build folders left by processes that were killed mid-build: any folder older than
    the longest a build may run cannot belong to a running build."""
    if not builds.is_dir():
        return
    deadline = time.time() - older_than
    for folder in builds.iterdir():
        with contextlib.suppress(OSError):  # another process may be sweeping it too
            if folder.lstat().st_mtime < deadline:
                if folder.is_dir() and not folder.is_symlink():
                    remove_tree(folder)  # however deep a killed build left it
                else:
                    folder.unlink()


def _images_read(spec: EnvironmentSpec) -> list[ImageName]:
    """The images a build reads: its base, and those its steps copy or mount from (a stage
    index, or a name the source policy would refuse, is left to the build to report)."""
    images = list(spec.images())
    stages = spec.stage_names()
    for step in spec.steps():
        if step.instruction == "ONBUILD":
            continue  # runs where the image is used as a base, not here
        for _, value in step.image_flags():
            if value.isdigit() or "$" in value or value.lower() in stages:
                continue
            with contextlib.suppress(InvalidReference):
                images.append(parse_image(value))
    return list(dict.fromkeys(images))


def _steps_context(spec: EnvironmentSpec, stage: str, target: Path, build_id: str) -> str:
    """Part 2's context: exactly the user's files, plus a hidden Dockerfile; returns its name."""
    target.mkdir(parents=True)
    if spec.context is not None:
        copy_context(spec.context, target)
    name = f".dockerfile.envctl-{build_id}"
    lines = [f"FROM {stage}", *(step.dockerfile_line() for step in spec.docker_steps)]
    if spec.stages:  # every stage as written, the environment's starting from `stage`
        lines = [line for each in spec.stages for line in each.dockerfile_lines(stage)]
    (target / name).write_text("\n".join(lines) + "\n")
    ignore = target / ".dockerignore"
    # as the Docker CLI does for a Dockerfile from outside the context: list it in .dockerignore
    # (and .dockerignore itself when the user has none), so the daemon removes both
    existing = ignore.read_text() if ignore.exists() else ".dockerignore"
    ignore.unlink(missing_ok=True)  # it may be a hard link to the user's file: never edit that
    ignore.write_text(f"{existing}\n{name}\n")
    return name
