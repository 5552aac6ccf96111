"""The environment spec: one model, read from three file formats that mean the same thing.

    envctl YAML       base_image, docker_steps, conda (path or inline), variables, platform, context
    conda YAML        name/channels/dependencies (+ pip:); the base image comes from the caller
    Azure ML (CLI v2) image + conda_file, or build: {path, dockerfile_path} whose FROM is the base

Parsing is pure: `hashing.formats.parse_spec_text` turns one file's text into a `SpecDraft` that
lists the other files it names (`FileRef`); the caller reads those and calls `complete_spec`.
Nothing here opens a file, reads the clock or the environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from hashing.conda import CondaEnvironment
from hashing.dockersteps import DockerStep, dockerfile_lines
from hashing.errors import SpecError
from hashing.imageref import (
    DEFAULT_PLATFORM,
    ImageName,
)
from hashing.pip import PIP_SOURCE_OPTIONS, pip_option_flag
from hashing.stages import ParsedDockerfile, Stage, qualified_sources

SpecFormat = Literal["envctl", "conda", "azureml"]


@dataclass(frozen=True, order=True)
class ContextEntry:
    """One path of a build context: a file (xxh3 of its bytes), a symlink (its target) or a dir."""

    path: str
    kind: Literal["file", "dir", "symlink"]
    mode: int
    digest: str = ""

    def canonical(self) -> list[str]:
        """The key's view of this entry."""
        return [self.path, self.kind, f"{self.mode:04o}", self.digest]


@dataclass(frozen=True)
class ContextManifest:
    """What a build context holds after `.dockerignore`/`.amlignore`; `root` is where it lives."""

    entries: tuple[ContextEntry, ...]
    root: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class EnvironmentSpec:
    """Everything that decides an environment image, normalized. Two specs are equal exactly
    when they must build the same image; `source` only says where this one was read from."""

    base_image: ImageName
    docker_steps: tuple[DockerStep, ...] = ()
    conda: CondaEnvironment | None = None
    variables: tuple[tuple[str, str], ...] = ()
    platform: str = DEFAULT_PLATFORM
    context: ContextManifest | None = None
    source: str | None = field(default=None, compare=False)
    # where the base image was named: (file, line, field); for errors about it
    base_origin: tuple[str | None, int | None, str] = field(
        default=(None, None, "base_image"), compare=False
    )
    # a multi-stage Dockerfile's stages, in order, the environment's among them; its steps are
    # that stage's, and `docker_steps` is then empty
    stages: tuple[Stage, ...] = ()

    def with_base_image(self, image: ImageName) -> EnvironmentSpec:
        """This spec on another base image (typically the same one, pinned to its digest)."""
        return replace(self, base_image=image)

    def images(self) -> tuple[ImageName, ...]:
        """The images the spec starts from: its base, then each stage's that names one."""
        return (self.base_image, *(s.image for s in self.stages if s.image is not None))

    def with_images(self, pin: Callable[[ImageName], ImageName]) -> EnvironmentSpec:
        """This spec with `pin` applied to each of `images()` (typically: pinned to digests)."""
        stages = tuple(
            s if s.image is None else replace(s, image=pin(s.image)) for s in self.stages
        )
        return replace(self, base_image=pin(self.base_image), stages=stages)

    @property
    def pinned(self) -> bool:
        """True when every image the spec starts from is named by digest."""
        return all(image.pinned for image in self.images())

    def steps(self) -> Iterator[DockerStep]:
        """Every docker step, of every stage."""
        yield from self.docker_steps
        for stage in self.stages:
            yield from stage.steps

    def dockerfile_lines(self, environment: str) -> list[str]:
        """The Dockerfile the engine builds the docker steps from, `environment` being the
        reference of the image envctl wrote: `FROM` it and the steps, or every stage with the
        environment's starting from it. Every step reads back as it was keyed; SpecError for
        one that cannot be written so (a resolve says so before a build is queued)."""
        if not self.stages:
            steps = [qualified_sources(s, frozenset()) for s in self.docker_steps]
            return [f"FROM {environment}", *dockerfile_lines(steps)]
        lines: list[str] = []
        for index, stage in enumerate(self.stages):
            earlier = frozenset(s.name for s in self.stages[:index] if s.name is not None)
            lines += stage.dockerfile_lines(environment, earlier)
        return lines

    def stage_names(self) -> frozenset[str]:
        """The stages' `AS` names: a step's `--from` that names one reads no image."""
        return frozenset(s.name for s in self.stages if s.name is not None)

    def image_steps(self) -> Iterator[DockerStep]:
        """The steps whose layers the final image holds: the environment's, or with stages
        those of the last stage and the stages it starts from (a stage copied from adds
        only what is copied)."""
        if not self.stages:
            yield from self.docker_steps
            return
        names = {s.name: s for s in self.stages if s.name is not None}
        stage: Stage | None = self.stages[-1]
        while stage is not None:
            yield from stage.steps
            stage = names.get(stage.parent) if stage.parent is not None else None

    @property
    def has_steps(self) -> bool:
        """True when an engine must run docker steps (or build stages) on the environment."""
        return bool(self.docker_steps or self.stages)

    def with_package_sources(
        self,
        *,
        channels: tuple[str, ...] = (),
        pip_index_url: str | None = None,
        pip_find_links: tuple[str, ...] = (),
    ) -> EnvironmentSpec:
        """This spec with the operator's package sources (ENVCTL_CHANNELS, the pip index and
        find-links) in place of its own. They decide what gets installed, so they must be in
        the key. The spec's own pip sources (`--extra-index-url`, …) are dropped: pip runs on
        the builder host, and what it may read is the operator's decision, not a workspace's."""
        conda = self.conda
        if conda is None:
            return self
        if channels:
            conda = replace(conda, channels=tuple(dict.fromkeys(c.rstrip("/") for c in channels)))
        if conda.pip:
            source: list[str] = []
            if pip_index_url or pip_find_links:
                # with links alone, pip must not also ask its default index
                source = [f"--index-url={pip_index_url}"] if pip_index_url else ["--no-index"]
                source += [f"--find-links={link}" for link in pip_find_links]
            kept = [o for o in conda.pip_options if pip_option_flag(o) not in PIP_SOURCE_OPTIONS]
            conda = replace(
                conda,
                pip_options=tuple(dict.fromkeys((*source, *kept))),
                pip_sources=tuple(source),
            )
        return replace(self, conda=conda)


@dataclass(frozen=True)
class FileRef:
    """A file a spec names, with where it names it (for errors about that file)."""

    path: str
    source: str
    line: int | None
    field: str

    def error(self, message: str) -> SpecError:
        """A SpecError pointing at the place that names this file."""
        return SpecError(message, source=self.source, line=self.line, field=self.field)


@dataclass(frozen=True)
class SpecDraft:
    """One spec file, parsed, with the files it names not yet read."""

    format: SpecFormat
    source: str
    base_image: ImageName | None
    base_line: int | None = None
    base_field: str = "base_image"
    platform: str = DEFAULT_PLATFORM
    variables: tuple[tuple[str, str], ...] = ()
    docker_steps: tuple[DockerStep, ...] = ()
    stages: tuple[Stage, ...] = ()
    conda: CondaEnvironment | None = None
    conda_file: FileRef | None = None
    context: FileRef | None = None
    dockerfile: FileRef | None = None  # relative to `context` (Azure ML `build:`)


def complete_spec(
    draft: SpecDraft,
    *,
    conda: tuple[CondaEnvironment, dict[str, str]] | None = None,
    dockerfile: ParsedDockerfile | None = None,
    context: ContextManifest | None = None,
    default_base: ImageName | None = None,
) -> EnvironmentSpec:
    """Join a draft with the content of the files it names into an EnvironmentSpec."""
    base = draft.base_image
    origin: tuple[str | None, int | None, str] = (draft.source, draft.base_line, draft.base_field)
    platform = draft.platform
    steps, stages = draft.docker_steps, draft.stages
    if dockerfile is not None:  # Azure ML's build: its Dockerfile makes the image
        base = dockerfile.base_image
        origin = (dockerfile.source, dockerfile.from_line, "FROM")
        platform = dockerfile.platform or platform
        steps, stages = dockerfile.steps, dockerfile.stages
    if base is None:
        base, origin = default_base, (draft.source, None, "base_image")
    if base is None:
        raise SpecError(
            "no base image: pass --base-image or set ENVCTL_BASE_IMAGE", source=draft.source
        )
    env = draft.conda
    variables = dict(draft.variables)
    if conda is not None:
        env, conda_vars = conda
        clash = variable_clash(variables, conda_vars)
        if clash is not None:
            raise SpecError(f"variable {clash} is also set by the conda file", source=draft.source)
        variables.update(conda_vars)
    return EnvironmentSpec(
        base_image=base,
        docker_steps=steps,
        conda=None if env is None or env.empty else env,
        variables=tuple(sorted(variables.items())),
        platform=platform,
        context=context,
        source=draft.source,
        base_origin=origin,
        stages=stages,
    )


def variable_clash(own: dict[str, str], conda: dict[str, str]) -> str | None:
    """A variable the spec and its conda environment set to different values, if any."""
    return next((name for name, value in conda.items() if own.get(name, value) != value), None)
