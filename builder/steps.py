"""The docker steps of a spec: run on the Docker engine FROM the image envctl wrote, with the
user's files alone in their context, then the result put into the workspace registry (pushed by
the engine, or saved and imported into an OCI layout), the tag last."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from builder.archive import export_archive, import_archive
from builder.config import BuildConfig
from builder.docker import DockerBuilder
from hashing import EnvironmentSpec, EnvKey, ImageName, InvalidReference, parse_image
from registry.base import Manifest
from registry.oci import OciRegistry
from registry.store import StoreRegistry
from specio.context import copy_context


class StepRunner:
    """Runs a spec's docker steps on one engine for one workspace registry."""

    def __init__(
        self, workspace: StoreRegistry, engine: DockerBuilder, config: BuildConfig
    ) -> None:
        self._workspace = workspace
        self._engine = engine
        self._config = config
        # the engine pushes to a registry it can reach; into an OCI layout it saves instead
        self._pushes = isinstance(workspace, OciRegistry)

    def tag(self, key: EnvKey) -> str:
        """What the engine tags the steps' image as: the workspace's reference, or a local
        name when the workspace is an OCI layout (saved from the engine, then imported)."""
        return self._workspace.reference(key) if self._pushes else f"envctl-local/env:{key}"

    def run(
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
        dockerfile = steps_context(spec, source, folder / "steps", build_id)
        # the host's copy has no setuid, setgid or sticky bits: the image gets the listed modes
        modes = {e.path: e.mode for e in spec.context.entries} if spec.context else {}
        tag = self.tag(key)
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

    def register(self, tag: str, key: EnvKey, folder: Path, on_log: Callable[[str], None]) -> str:
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


def images_read(spec: EnvironmentSpec) -> list[ImageName]:
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


def steps_context(spec: EnvironmentSpec, stage: str, target: Path, build_id: str) -> str:
    """Part 2's context: exactly the user's files, plus a hidden Dockerfile; returns its name."""
    target.mkdir(parents=True)
    if spec.context is not None:
        copy_context(spec.context, target)
    name = f".dockerfile.envctl-{build_id}"
    (target / name).write_text("\n".join(spec.dockerfile_lines(stage)) + "\n")
    ignore = target / ".dockerignore"
    # as the Docker CLI does for a Dockerfile from outside the context: list it in .dockerignore
    # (and .dockerignore itself when the user has none), so the daemon removes both
    existing = ignore.read_text() if ignore.exists() else ".dockerignore"
    ignore.unlink(missing_ok=True)  # it may be a hard link to the user's file: never edit that
    ignore.write_text(f"{existing}\n{name}\n")
    return name
