"""The three file formats, read into one `SpecDraft` each (see `hashing.spec`):

    envctl YAML       base_image, docker_steps, conda (path or inline), variables, platform, context
    conda YAML        name/channels/dependencies (+ pip:); the base image comes from the caller
    Azure ML (CLI v2) image + conda_file, or build: {path, dockerfile_path}: its Dockerfile

Pure: a draft lists the other files its spec names (`FileRef`); the caller reads them and
calls `complete_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hashing.conda import CondaEnvironment, parse_conda
from hashing.dockersteps import DockerStep
from hashing.imageref import (
    DEFAULT_PLATFORM,
    ImageName,
    InvalidReference,
    normalize_platform,
    parse_image,
)
from hashing.spec import FileRef, SpecDraft, SpecFormat, variable_clash
from hashing.stages import Stage, parse_docker_steps
from hashing.validate import VariableName, VariableValue, validate
from hashing.yamldoc import Path, YamlDocument, load_yaml


class _EnvctlFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    base_image: str
    docker_steps: str | None = None
    conda: str | dict[str, Any] | None = None
    variables: dict[VariableName, VariableValue] = Field(default_factory=dict)
    platform: str = DEFAULT_PLATFORM
    context: str | None = None


class _AzureBuild(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: str
    dockerfile_path: str = "Dockerfile"


class _AzureMLEnvironment(BaseModel):
    """Azure ML CLI v2 environment; name, version, description, tags, $schema are metadata."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    schema_: str | None = Field(default=None, alias="$schema")
    name: str | None = None
    version: str | int | float | None = None
    description: str | None = None
    tags: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    image: str | None = None
    conda_file: str | dict[str, Any] | None = None
    build: _AzureBuild | None = None
    os_type: Literal["linux", "Linux", "windows", "Windows"] | None = None
    inference_config: dict[str, Any] | None = None


def detect_format(doc: YamlDocument) -> SpecFormat:
    """Tell which of the three formats a parsed YAML file is in."""
    if not isinstance(doc.value, dict):
        raise doc.error((), "a spec file is a YAML mapping")
    keys = set(doc.value)
    if "base_image" in keys:
        return "envctl"
    if keys & {"image", "build", "conda_file", "$schema", "os_type", "inference_config"}:
        return "azureml"
    if keys & {"dependencies", "channels"}:
        return "conda"
    raise doc.error(
        (),
        "cannot tell the format: expected base_image (envctl), image or build (Azure ML), "
        "or dependencies (conda environment)",
    )


def parse_spec_text(text: str, source: str, *, format: SpecFormat | None = None) -> SpecDraft:
    """Parse one spec file's text. `source` names it in errors and anchors relative paths."""
    doc = load_yaml(text, source)
    fmt = format or detect_format(doc)
    if not isinstance(doc.value, dict):
        raise doc.error((), "a spec file is a YAML mapping")
    if fmt == "envctl":
        return _envctl_draft(doc)
    if fmt == "azureml":
        return _azureml_draft(doc)
    conda, variables = parse_conda(doc)
    return SpecDraft("conda", source, None, variables=tuple(sorted(variables.items())), conda=conda)


@dataclass(frozen=True)
class NamedFiles:
    """The files a spec names: its conda file, its build context, the Dockerfile in that."""

    conda_file: FileRef | None = None
    context: FileRef | None = None
    dockerfile: FileRef | None = None


def named_files(text: str, source: str, *, format: SpecFormat | None = None) -> NamedFiles:
    """The files a spec names, read without parsing what it says of packages, steps or images
    (no conda or Docker parser is loaded): what a client gathers to send with it, leaving the
    checks to the server."""
    doc = load_yaml(text, source)
    fmt = format or detect_format(doc)
    if fmt == "envctl":
        return _envctl_files(doc, validate(doc, _EnvctlFile))
    if fmt == "azureml":
        return _azureml_files(doc, validate(doc, _AzureMLEnvironment))
    return NamedFiles()


def _envctl_files(doc: YamlDocument, model: _EnvctlFile) -> NamedFiles:
    conda = _ref(doc, ("conda",), model.conda) if isinstance(model.conda, str) else None
    context = None if model.context is None else _ref(doc, ("context",), model.context)
    return NamedFiles(conda, context)


def _azureml_files(doc: YamlDocument, model: _AzureMLEnvironment) -> NamedFiles:
    conda = None
    if isinstance(model.conda_file, str):
        conda = _ref(doc, ("conda_file",), model.conda_file)
    if model.build is None:
        return NamedFiles(conda)
    context = _ref(doc, ("build", "path"), model.build.path)
    dockerfile = _ref(doc, ("build", "dockerfile_path"), model.build.dockerfile_path)
    return NamedFiles(conda, context, dockerfile)


def parse_conda_text(
    text: str, source: str, *, platform: str = DEFAULT_PLATFORM
) -> tuple[CondaEnvironment, dict[str, str]]:
    """Parse a conda environment file named by a spec, for the spec's image `platform`."""
    return parse_conda(load_yaml(text, source), platform=platform)


def _envctl_draft(doc: YamlDocument) -> SpecDraft:
    model = validate(doc, _EnvctlFile)
    steps: tuple[DockerStep, ...] = ()
    stages: tuple[Stage, ...] = ()
    if model.docker_steps is not None:
        first = doc.block_starts.get(("docker_steps",)) or doc.line_of(("docker_steps",)) or 1
        steps, stages = parse_docker_steps(model.docker_steps, doc.source, first_line=first)
    conda = None
    platform = _platform(doc, ("platform",), model.platform)
    variables = model.variables
    if isinstance(model.conda, dict):
        conda, conda_vars = parse_conda(doc, ("conda",), platform=platform)
        variables = _merge(doc, model.variables, conda_vars)
    files = _envctl_files(doc, model)
    return SpecDraft(
        "envctl",
        doc.source,
        _image(doc, ("base_image",), model.base_image),
        doc.line_of(("base_image",)),
        platform=platform,
        variables=tuple(sorted(variables.items())),
        docker_steps=steps,
        stages=stages,
        conda=conda,
        conda_file=files.conda_file,
        context=files.context,
    )


def _azureml_draft(doc: YamlDocument) -> SpecDraft:
    model = validate(doc, _AzureMLEnvironment)
    if (model.image is None) == (model.build is None):
        raise doc.error((), "an Azure ML environment needs exactly one of image and build")
    platform = f"{(model.os_type or 'linux').lower()}/amd64"
    conda = None
    variables: dict[str, str] = {}
    if isinstance(model.conda_file, dict):
        conda, variables = parse_conda(doc, ("conda_file",), platform=platform)
    files = _azureml_files(doc, model)
    return SpecDraft(
        "azureml",
        doc.source,
        None if model.image is None else _image(doc, ("image",), model.image),
        doc.line_of(("image",)),
        "image",
        platform=platform,
        variables=tuple(sorted(variables.items())),
        conda=conda,
        conda_file=files.conda_file,
        context=files.context,
        dockerfile=files.dockerfile,
    )


def _image(doc: YamlDocument, at: Path, text: str) -> ImageName:
    try:
        return parse_image(text)
    except InvalidReference as exc:
        raise doc.error(at, str(exc)) from None


def _platform(doc: YamlDocument, at: Path, text: str) -> str:
    try:
        return normalize_platform(text)
    except InvalidReference as exc:
        raise doc.error(at, str(exc)) from None


def _ref(doc: YamlDocument, at: Path, path: str) -> FileRef:
    if not path.strip():
        raise doc.error(at, "empty path")
    line = doc.line_of(at)
    return FileRef(path.strip(), doc.source, line, ".".join(str(p) for p in at))


def _merge(doc: YamlDocument, own: dict[str, str], conda: dict[str, str]) -> dict[str, str]:
    clash = variable_clash(own, conda)
    if clash is not None:
        raise doc.error(("variables", clash), f"{clash} is also set to {conda[clash]!r} by conda")
    return {**conda, **own}
