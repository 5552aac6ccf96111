"""A build, start to finish: solve, install, build on the engine, push, register.

    solve (py-rattler) → lock → install into .envctl/env for its in-image prefix
    part 1: FROM base@digest, labels, the environment, ENV, pip     context: the environment only
    part 2: FROM part 1, the spec's docker steps                     context: the user's files only
    push (the registry writes the tag after every blob) → verify the digest → metadata

The build runs in two parts because the classic builder has one context per build: were the
environment in the user's context, a `COPY . /app` step would copy it (and our Dockerfile) into
the image, which the key never promised. Part 2's Dockerfile is hidden the way the Docker CLI
hides a Dockerfile from outside the context: a random name that `.dockerignore` lists, which
the daemon then removes from the context before any step runs.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import pip
from builder.archive import import_archive
from builder.conda import LockedPackage, install, solve
from builder.context import copy_context
from builder.docker import DockerBuilder, write_context
from builder.errors import BuildError, DiskFull, disk_full
from builder.render import ENV_DIR, WHEELS_DIR, env_prefix, render
from builder.resolve import OnEvent
from hashing import (
    EnvironmentSpec,
    EnvKey,
    ImageName,
    InvalidReference,
    canonical_json,
    parse_image,
)
from registry.auth import Credentials
from registry.base import ImageRef
from registry.metadata import EnvMetadata
from registry.oci import OciRegistry
from registry.store import StoreRegistry

VERSION = "0.1.0"


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
    # workspace's own for its registry (api.store.workspace_credentials)
    pull_credentials: Mapping[str, Credentials] = field(default_factory=dict)
    # raises unless the workspace may read an image with exactly those credentials: the engine
    # serves an image any earlier build pulled without asking the registry again, so a build
    # of a shared service proves its access to every image it reads before the engine runs
    confirm_read: Callable[[ImageName], None] | None = None


@dataclass(frozen=True)
class _Locks:
    """What a build was installed from: the conda lock and the pip lock, each if any."""

    conda: str | None = None
    pip: str | None = None


def _python_of(packages: Sequence[LockedPackage]) -> str | None:
    """`MAJOR.MINOR` of the python a conda lock installs, if it installs one."""
    for package in packages:
        if package.name == "python":
            return ".".join(package.version.split(".")[:2])
    return None


class DockerImageBuilder:
    """Builds a key's image on the Docker engine and registers it in the workspace registry."""

    def __init__(
        self, workspace: StoreRegistry, engine: DockerBuilder, config: BuildConfig
    ) -> None:
        self._workspace = workspace
        self._engine = engine
        self._config = config
        # the engine pushes to a registry it can reach; into an OCI layout it saves instead
        self._pushes = isinstance(workspace, OciRegistry)

    def build(
        self, spec: EnvironmentSpec, key: EnvKey, build_id: str, on_event: OnEvent
    ) -> ImageRef:
        """Build, push and register `spec`'s image; the workspace's ImageRef with `build_id`."""
        started = time.monotonic()
        builds = self._config.home / "builds"
        _sweep(builds, older_than=self._engine.timeout + 3600)
        folder = builds / build_id
        log: list[str] = []

        def on_log(line: str) -> None:
            log.append(line)
            on_event("log", line)

        tag: str | None = None
        try:
            locks = self._prepare(spec, key, folder / "environment", on_event)
            # the engine's tag: the registry reference it pushes to, or a local name
            tag = self._workspace.reference(key) if self._pushes else f"envctl-local/env:{key}"
            on_event("build", f"building {key} (build {build_id})")
            self._build_image(spec, key, build_id, folder, tag, locks, on_log)
            on_event("push", f"pushing {key} to {self._workspace.address}")
            digest = self._register(tag, key, folder, on_log)
            found = self._workspace.resolve(key)  # asked, not remembered: it was just written
            if found is None or found.digest != digest:
                raise BuildError(
                    f"the registry holds {found and found.digest} for {key}, not the pushed "
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
            }
            self._workspace.put_metadata(key, _metadata(spec, key, locks, log, facts))
            return replace(hit, build_id=build_id)
        except (BuildError, OSError) as exc:
            # a full disk shows as whatever the tool that hit it says (rattler: "EOF while
            # parsing a value"): said for what it is, and never remembered as the key's failure
            if disk_full(self._config.home):
                raise DiskFull(build_id=build_id) from exc
            raise
        finally:
            # the registry has the image, or nothing does: the engine's copy only takes disk
            if tag is not None:
                self._engine.remove(tag)
            shutil.rmtree(folder, ignore_errors=True)

    def _register(self, tag: str, key: EnvKey, folder: Path, on_log: Callable[[str], None]) -> str:
        """Put the built image in the workspace registry (the tag last); its manifest digest."""
        if self._pushes:  # mounting what it can
            return self._engine.push(tag, auth=self._auth(), on_log=on_log)
        archive = folder / "image.tar"  # a registry the engine cannot reach (an OCI layout)
        self._engine.save(tag, archive)
        return import_archive(archive, self._workspace, key)

    def _build_image(
        self,
        spec: EnvironmentSpec,
        key: EnvKey,
        build_id: str,
        folder: Path,
        tag: str,
        locks: _Locks,
        on_log: Callable[[str], None],
    ) -> None:
        """The image, tagged `tag`: in one build when no step reads the build context, else
        part 1 (the environment) as a stage and part 2 (the steps) on top of it."""
        build = functools.partial(
            self._engine.build,
            labels={},
            on_log=on_log,
            build_id=build_id,
            registries=self._config.pull_registries,
            credentials=self._config.pull_credentials,
        )
        if self._config.confirm_read is not None:  # a workspace's build on a shared engine
            for image in _images_read(spec):
                self._config.confirm_read(image)
        if not _reads_context(spec):  # nothing can see envctl's files: one build will do
            environment = folder / "environment"
            full = render(spec, key, locks.conda, pip_lock=locks.pip, version=VERSION)
            (environment / "Dockerfile").write_text(full.dockerfile)
            build(environment, tag=tag)
            return
        stage = f"envctl-build/{key}:{build_id}"
        build(folder / "environment", tag=stage)
        try:
            dockerfile = _steps_context(spec, stage, folder / "steps", build_id)
            # the host's copy has no setuid, setgid or sticky bits: the image gets the listed modes
            modes = {e.path: e.mode for e in spec.context.entries} if spec.context else {}
            build(folder / "steps", tag=tag, dockerfile=dockerfile, modes=modes)
        finally:
            self._engine.remove(stage)

    def _prepare(
        self, spec: EnvironmentSpec, key: EnvKey, target: Path, on_event: OnEvent
    ) -> _Locks:
        """Solve and install the conda environment, resolve and fetch the pip wheels, and write
        part 1's context into `target`; the locks they were made from."""
        locks = _Locks()
        installed: Sequence[LockedPackage] = ()
        cache = self._config.home / "conda"
        conda = spec.conda
        if conda is not None and conda.dependencies:
            # the spec's channels are the ones to use: the operator's sources, if any, were put
            # into the spec before it was keyed (EnvironmentSpec.with_package_sources)
            channels = conda.channels
            on_event("solve", f"solving {len(conda.dependencies)} specs on {', '.join(channels)}")
            lock = solve(conda, platform=spec.platform, channels=None, cache_dir=cache)
            locks, installed = _Locks(conda=lock.text), lock.packages
            on_event("install", f"installing {len(lock.packages)} conda packages")
            install(lock, prefix=env_prefix(key), target=target / ENV_DIR, cache_dir=cache)
        if conda is not None and conda.pip:
            python = _python_of(installed)
            if python is None:  # the base image's own python3 will run pip
                base = spec.base_image
                python = self._engine.python_version(f"{base.name}@{base.digest}")
            on_event("solve", f"resolving {len(conda.pip)} pip requirements for python {python}")
            pip_lock = pip.resolve(
                conda.pip,
                conda.pip_arguments,
                python_version=python,
                platform=spec.platform,
                work=target.parent / "pip",
            )
            on_event("install", f"fetching {len(pip_lock.names)} pinned wheels")
            pip.download(
                pip_lock,
                conda.pip_arguments,
                python_version=python,
                platform=spec.platform,
                target=target / WHEELS_DIR,
            )
            locks = _Locks(conda=locks.conda, pip=pip_lock.text)
        context = render(
            replace(spec, docker_steps=()), key, locks.conda, pip_lock=locks.pip, version=VERSION
        )
        write_context(context, target)
        return locks

    def _auth(self) -> dict[str, str] | None:
        credentials = self._config.credentials
        if credentials is None:
            return None
        return {"username": credentials.username, "password": credentials.password}


def _metadata(
    spec: EnvironmentSpec, key: EnvKey, locks: _Locks, log: list[str], facts: dict[str, object]
) -> EnvMetadata:
    """What is stored with the image: the canonical spec, the locks, the whole Dockerfile."""
    return EnvMetadata(
        key=key,
        spec_json=canonical_json(spec),
        lock=locks.conda,
        pip_lock=locks.pip,
        dockerfile=render(spec, key, locks.conda, pip_lock=locks.pip, version=VERSION).dockerfile,
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
            if folder.stat().st_mtime < deadline:
                shutil.rmtree(folder)


def _images_read(spec: EnvironmentSpec) -> list[ImageName]:
    """The images a build reads: its base, and those its steps copy or mount from (a stage
    index, or a name the source policy would refuse, is left to the build to report)."""
    images = [spec.base_image]
    for step in spec.docker_steps:
        if step.instruction == "ONBUILD":
            continue  # runs where the image is used as a base, not here
        for _, value in step.image_flags():
            if value.isdigit() or "$" in value:
                continue
            with contextlib.suppress(InvalidReference):
                images.append(parse_image(value))
    return list(dict.fromkeys(images))


def _reads_context(spec: EnvironmentSpec) -> bool:
    """True when a docker step may read the build context (COPY or ADD, but not `--from`)."""
    return any(
        step.instruction in ("COPY", "ADD")
        and not any(flag.startswith("--from=") for flag in step.flags)
        for step in spec.docker_steps
    )


def _steps_context(spec: EnvironmentSpec, stage: str, target: Path, build_id: str) -> str:
    """Part 2's context: exactly the user's files, plus a hidden Dockerfile; returns its name."""
    target.mkdir(parents=True)
    if spec.context is not None:
        copy_context(spec.context, target)
    name = f".dockerfile.envctl-{build_id}"
    lines = [f"FROM {stage}", *(step.dockerfile_line() for step in spec.docker_steps)]
    (target / name).write_text("\n".join(lines) + "\n")
    ignore = target / ".dockerignore"
    # as the Docker CLI does for a Dockerfile from outside the context: list it in .dockerignore
    # (and .dockerignore itself when the user has none), so the daemon removes both
    existing = ignore.read_text() if ignore.exists() else ".dockerignore"
    ignore.unlink(missing_ok=True)  # it may be a hard link to the user's file: never edit that
    ignore.write_text(f"{existing}\n{name}\n")
    return name
