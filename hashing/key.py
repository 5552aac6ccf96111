"""The content key of an environment.

    key = xxh3_128(canonical JSON), 32 lowercase hex characters

The canonical JSON is `[SCHEME, inputs]` with sorted keys and no whitespace, so it starts with the
scheme version. Changing anything in how `canonical_inputs` is built changes keys, which orphans
every cached image: such a change must bump SCHEME, and the golden vectors in `fixtures/golden/`
are there to make it impossible to do by accident.

Everything here is pure: no I/O, no clock, no environment variables.
"""

from __future__ import annotations

import json
import re
from typing import Any, NewType

import xxhash

from hashing.spec import EnvironmentSpec

SCHEME = "envctl.key/1"

EnvKey = NewType("EnvKey", str)
"""32 lowercase hex characters: the xxh3_128 of an environment's canonical JSON."""

_KEY = re.compile(r"^[0-9a-f]{32}$")


def canonical_inputs(spec: EnvironmentSpec) -> dict[str, Any]:
    """Every input that decides the image, normalized, as JSON-ready values. A multi-stage
    spec adds `stages`; a spec without them has no such key, so its key is as it always was."""
    inputs: dict[str, Any] = {
        "base_image": spec.base_image.canonical(),
        "platform": spec.platform,
        "docker_steps": [step.canonical() for step in spec.docker_steps],
        "conda": None if spec.conda is None else spec.conda.canonical(),
        "variables": dict(spec.variables),
        "context": None
        if spec.context is None
        else [entry.canonical() for entry in spec.context.entries],
    }
    if spec.stages:
        inputs["stages"] = [stage.canonical() for stage in spec.stages]
    return inputs


def canonical_json(spec: EnvironmentSpec) -> str:
    """The exact text that is hashed: `[SCHEME, inputs]`, sorted keys, compact, UTF-8."""
    return json.dumps(
        [SCHEME, canonical_inputs(spec)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def compute_key(spec: EnvironmentSpec) -> EnvKey:
    """The content key of `spec`. Pure: the same spec gives the same key on every machine."""
    return EnvKey(xxhash.xxh3_128_hexdigest(canonical_json(spec).encode()))


def is_key(text: str) -> bool:
    """True when `text` has the shape of an EnvKey."""
    return bool(_KEY.fullmatch(text))
