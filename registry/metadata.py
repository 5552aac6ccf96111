"""An environment's metadata: what built its image and how, stored next to the image.

It travels as an OCI artifact under tag `KEY.meta`, in the layout `oras` writes (one layer per
file, named by `org.opencontainers.image.title`), so `oras pull REGISTRY/NS/env:KEY.meta` gives
the files back: spec.json (the canonical inputs), conda-lock.yml, Dockerfile, build.log and
facts.json (when, how long, which builder), and pip.lock.txt when there are pip packages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hashing import EnvKey

ARTIFACT_TYPE = "application/vnd.envctl.metadata.v1+json"
TITLE = "org.opencontainers.image.title"

# file name -> (attribute, media type)
_FILES = {
    "spec.json": ("spec_json", "application/vnd.envctl.spec.v1+json"),
    "conda-lock.yml": ("lock", "application/vnd.envctl.conda-lock.v1+yaml"),
    "pip.lock.txt": ("pip_lock", "application/vnd.envctl.pip-lock.v1+txt"),
    "Dockerfile": ("dockerfile", "application/vnd.envctl.dockerfile.v1"),
    "build.log": ("build_log", "text/plain"),
}
FACTS_FILE = "facts.json"
FACTS_TYPE = "application/vnd.envctl.facts.v1+json"


@dataclass(frozen=True)
class EnvMetadata:
    """What is known about one environment's image. Text fields are None when not recorded."""

    key: EnvKey
    spec_json: str
    lock: str | None = None
    pip_lock: str | None = None
    dockerfile: str | None = None
    build_log: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)

    def files(self) -> list[tuple[str, str, bytes]]:
        """(file name, media type, content) of every recorded file, facts last."""
        out = []
        for name, (attribute, media_type) in _FILES.items():
            text = getattr(self, attribute)
            if text is not None:
                out.append((name, media_type, text.encode()))
        facts = {"key": self.key, **self.facts}
        out.append((FACTS_FILE, FACTS_TYPE, json.dumps(facts, sort_keys=True).encode()))
        return out

    @classmethod
    def from_files(cls, key: EnvKey, files: Mapping[str, bytes]) -> EnvMetadata:
        """Rebuild metadata from the files of its artifact (unknown files are ignored)."""
        texts = {
            attribute: files[name].decode()
            for name, (attribute, _) in _FILES.items()
            if name in files
        }
        facts = json.loads(files[FACTS_FILE]) if FACTS_FILE in files else {}
        facts.pop("key", None)
        return cls(key=key, spec_json=texts.pop("spec_json", ""), facts=facts, **texts)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EnvMetadata:
        """The inverse of `as_json` (what the API answers)."""
        spec = body.get("spec")
        return cls(
            key=EnvKey(body["key"]),
            spec_json="" if spec is None else json.dumps(spec, indent=2),
            lock=body.get("lock"),
            pip_lock=body.get("pip_lock"),
            dockerfile=body.get("dockerfile"),
            build_log=body.get("build_log"),
            facts=dict(body.get("facts") or {}),
        )

    def as_json(self) -> dict[str, Any]:
        """The shape `envctl inspect --json` prints."""
        return {
            "key": self.key,
            "spec": json.loads(self.spec_json) if self.spec_json else None,
            "lock": self.lock,
            "pip_lock": self.pip_lock,
            "dockerfile": self.dockerfile,
            "build_log": self.build_log,
            "facts": dict(self.facts),
        }
