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
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import envlayers, pip
from builder.assemble import (
    ImageSettings,
    assemble,
    image_config,
    layer_count,
    platform_manifest,
)
from builder.conda import CondaLock, solve
from builder.config import BuildConfig
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
from builder.steps import StepRunner, images_read
from hashing import (
    EnvironmentSpec,
    EnvKey,
    ImageName,
    canonical_json,
    normalize_platform,
)
from registry.base import ImageRef, Manifest
from registry.metadata import EnvMetadata
from registry.oci import OciRegistry
from registry.store import StoreRegistry

VERSION = "0.1.0"
_CHUNK = 1 << 20


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
        self._runner = StepRunner(workspace, engine, config)

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
                for image in images_read(spec):
                    self._config.confirm_read(image)
            self._check_stages(spec, build_id)
            made, manifest, sent = self._write(spec, key, build_id, folder, on_event)
            total = sum(layer.size for layer in made.layers)
            on_log(
                f"envctl: wrote {len(made.layers)} layers ({made.made} made here), sent "
                f"{len(sent)} of them ({_size(sum(layer.size for layer in sent))} of "
                f"{_size(total)}), {time.monotonic() - started:.2f} s into the build"
            )
            dockerfile = None
            digest = manifest.digest
            if spec.has_steps:
                stage, dockerfile = self._runner.run(spec, key, build_id, folder, manifest, on_log)
                tag = self._runner.tag(key)
                on_event("push", f"pushing {key} to {self._workspace.address}")
                digest = self._runner.register(tag, key, folder, on_log)
            hit = self._confirm(key, digest, build_id)
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

    def _write(
        self, spec: EnvironmentSpec, key: EnvKey, build_id: str, folder: Path, on_event: OnEvent
    ) -> tuple[_Made, Manifest, list[Layer]]:
        """Make the environment's layers within the image's layer budget and write the image
        (the base's layers, ours, the config) into the workspace; the tag only when no docker
        step follows. What was made, the manifest, and the layers that had to be sent."""
        base_image = spec.base_image
        if base_image.digest is None:
            raise BuildError(f"the base image {base_image} is not pinned", build_id=build_id)
        platform = normalize_platform(spec.platform)
        with self._base_registry(base_image) as base:
            below = platform_manifest(base, base_image.digest, platform)
            budget = _budget(spec, layer_count(below), build_id)
            made = self._environment(spec, base_image, folder, budget, on_event)
            sent: list[Layer] = []
            on_event("push", f"writing {key} to {self._workspace.address}")
            manifest = assemble(
                base, base_image.digest, self._workspace, None if spec.has_steps else key,
                made.layers, functools.partial(self._read, made), _settings(spec, key, made),
                platform, below=below, on_send=sent.append,
            )  # fmt: skip
        return made, manifest, sent

    def _check_stages(self, spec: EnvironmentSpec, build_id: str) -> None:
        """Each image a stage starts from, read as the base is (`image_config`): the engine
        would run its ONBUILD triggers, which name images no one checked."""
        for stage in spec.stages:
            if stage.image is None:
                continue
            if stage.image.digest is None:
                raise BuildError(f"the stage image {stage.image} is not pinned", build_id=build_id)
            platform = normalize_platform(stage.platform or spec.platform)
            with self._base_registry(stage.image) as registry:
                below = platform_manifest(registry, stage.image.digest, platform)
                image_config(registry, stage.image.digest, below)

    def _confirm(self, key: EnvKey, digest: str, build_id: str) -> ImageRef:
        """The workspace's answer for `key`, asked (not remembered: it was just written); a
        BuildError unless it is the `digest` written."""
        found = self._workspace.resolve(key)
        if found is None or found.digest != digest:
            raise BuildError(
                f"the registry holds {found and found.digest} for {key}, not the written {digest}",
                build_id=build_id,
            )
        self._workspace.forget(key)  # a --force-rebuild replaces what this process saw
        return ImageRef(key, self._workspace.reference(key), found.digest)

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


def _budget(spec: EnvironmentSpec, base_layers: int, build_id: str) -> int:
    """How many layers the environment may have: what engines run, less the base's and the
    steps'; a StepFailed when too few are left for its buckets."""
    steps = sum(s.instruction in ("RUN", "COPY", "ADD") for s in spec.image_steps())
    room = MAX_LAYERS - base_layers - steps
    if room < 2 * envlayers.BUCKETS + 1:
        raise StepFailed(
            f"the base image has {base_layers} layers and the steps make {steps}: with the "
            f"environment's, the image would pass {MAX_LAYERS} layers, more than engines run; "
            "flatten the base or merge steps",
            build_id=build_id,
        )
    return min(LAYER_BUDGET, room)


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
