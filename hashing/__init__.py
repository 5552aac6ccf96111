"""Environment specs and their content keys: parse, normalize, canonicalize, hash. Pure."""

from hashing.conda import CondaEnvironment
from hashing.dockersteps import DockerStep, parse_steps
from hashing.errors import EnvctlError, SpecError
from hashing.imageref import (
    ImageName,
    InvalidReference,
    normalize_platform,
    parse_image,
    parse_image_at,
)
from hashing.key import SCHEME, EnvKey, canonical_inputs, canonical_json, compute_key, is_key
from hashing.spec import (
    ContextEntry,
    ContextManifest,
    EnvironmentSpec,
    FileRef,
    SpecDraft,
    SpecFormat,
    complete_spec,
    parse_conda_text,
    parse_spec_text,
)
from hashing.stages import ParsedDockerfile, Stage, parse_dockerfile

__all__ = [
    "SCHEME",
    "CondaEnvironment",
    "ContextEntry",
    "ContextManifest",
    "DockerStep",
    "EnvKey",
    "EnvctlError",
    "EnvironmentSpec",
    "FileRef",
    "ImageName",
    "InvalidReference",
    "ParsedDockerfile",
    "SpecDraft",
    "SpecError",
    "SpecFormat",
    "Stage",
    "canonical_inputs",
    "canonical_json",
    "complete_spec",
    "compute_key",
    "is_key",
    "normalize_platform",
    "parse_conda_text",
    "parse_dockerfile",
    "parse_image",
    "parse_image_at",
    "parse_spec_text",
    "parse_steps",
]
