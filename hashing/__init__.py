"""Environment specs and their content keys: parse, normalize, canonicalize, hash. Pure.

The names below are loaded when first used (PEP 562): `import hashing.errors` alone, as a
client or the CLI's `--help` does, does not load the parsers (rattler, Docker's) and pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hashing.lazy import exports

if TYPE_CHECKING:
    from hashing.conda import CondaEnvironment
    from hashing.dockersteps import DockerStep, parse_steps
    from hashing.errors import EnvctlError, SpecError
    from hashing.formats import parse_conda_text, parse_spec_text
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
    )
    from hashing.stages import ParsedDockerfile, Stage, parse_dockerfile

_WHERE = {
    "CondaEnvironment": "hashing.conda",
    "DockerStep": "hashing.dockersteps",
    "parse_steps": "hashing.dockersteps",
    "EnvctlError": "hashing.errors",
    "SpecError": "hashing.errors",
    "ImageName": "hashing.imageref",
    "InvalidReference": "hashing.imageref",
    "normalize_platform": "hashing.imageref",
    "parse_image": "hashing.imageref",
    "parse_image_at": "hashing.imageref",
    "SCHEME": "hashing.key",
    "EnvKey": "hashing.key",
    "canonical_inputs": "hashing.key",
    "canonical_json": "hashing.key",
    "compute_key": "hashing.key",
    "is_key": "hashing.key",
    "ContextEntry": "hashing.spec",
    "ContextManifest": "hashing.spec",
    "EnvironmentSpec": "hashing.spec",
    "FileRef": "hashing.spec",
    "SpecDraft": "hashing.spec",
    "SpecFormat": "hashing.spec",
    "complete_spec": "hashing.spec",
    "parse_conda_text": "hashing.formats",
    "parse_spec_text": "hashing.formats",
    "ParsedDockerfile": "hashing.stages",
    "Stage": "hashing.stages",
    "parse_dockerfile": "hashing.stages",
}


__getattr__ = exports(__name__, _WHERE)

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
