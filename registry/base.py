"""The registry contract: what every store of environment images offers.

    Registry            lookup by key, metadata, copy in, list, delete: what the resolver uses
    ├── StoreRegistry   implements Registry once, over the primitives of one repository
    │   ├── OciRegistry      an OCI distribution registry over HTTP(S)
    │   └── LayoutRegistry   an OCI image layout folder (the embedded default)
    └── TieredRegistry  workspace, then global; a global hit is copied into the workspace

Every registry keeps its environments in one repository, `NAMESPACE/env`, one tag per key, and
each key's metadata as an OCI artifact under tag `KEY.meta` (distribution 2.8 has no referrers
API). Tags are immutable by design: a key's tag is written once, after all its blobs, so a
confirmed hit may be remembered for ever; a miss is never remembered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from hashing import EnvKey
from registry.metadata import EnvMetadata

if TYPE_CHECKING:  # StoreRegistry is built on the types below
    from registry.store import StoreRegistry

Source = Literal["workspace", "global", "built"]
REPOSITORY = "env"
META_SUFFIX = ".meta"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)


@dataclass(frozen=True)
class ImageRef:
    """Where an environment's image is: full reference by tag, its manifest digest, which tier."""

    key: EnvKey
    image: str
    digest: str
    source: Source = "workspace"
    build_id: str | None = None  # the build that made it, when this call waited on one

    @property
    def pinned(self) -> str:
        """The reference by digest (`…/env@sha256:…`), what a runner should pull."""
        return f"{self.image.rsplit(':', 1)[0]}@{self.digest}"

    def as_json(self) -> dict[str, str]:
        """The shape `envctl resolve --json` prints (`build_id` when a build was waited on)."""
        body = {"key": self.key, "image": self.image, "digest": self.digest, "source": self.source}
        return body if self.build_id is None else {**body, "build_id": self.build_id}


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob or a child manifest."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Descriptor:
        """Read `{"mediaType", "digest", "size"}`."""
        return cls(str(value.get("mediaType", "")), str(value["digest"]), int(value["size"]))

    def as_json(self) -> dict[str, Any]:
        """`{"mediaType", "digest", "size"}`, as a manifest or index names it."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A manifest or index, as bytes (its digest is over exactly these bytes)."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        """`sha256:…` of the bytes."""
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def descriptor(self) -> Descriptor:
        """This manifest as a descriptor."""
        return Descriptor(self.media_type, self.digest, len(self.data))

    @property
    def is_index(self) -> bool:
        """True for an OCI index or Docker manifest list (children are manifests)."""
        return self.media_type in INDEX_TYPES

    def references(self) -> list[Descriptor]:
        """Child manifests of an index; config and layers of a manifest."""
        body = json.loads(self.data)
        if self.is_index:
            return [Descriptor.from_json(m) for m in body.get("manifests", [])]
        return [Descriptor.from_json(body["config"])] + [
            Descriptor.from_json(layer) for layer in body.get("layers", [])
        ]


@runtime_checkable
class Registry(Protocol):
    """A store of environment images by key. Errors are never misses: an unreachable or
    refusing registry raises RegistryError; only a registry that answers "no such tag"
    gives None."""

    @property
    def address(self) -> str:
        """Where this registry is (`HOST[:PORT]/NAMESPACE` or `oci:PATH`), for messages."""
        ...

    def lookup(self, key: EnvKey) -> ImageRef | None:
        """The image of `key`, or None when this registry does not have it."""
        ...

    def remembered(self, key: EnvKey) -> ImageRef | None:
        """The hit of `key` this object has already confirmed, without asking anyone (None
        when it has not: then `lookup` asks)."""
        ...

    def get_metadata(self, key: EnvKey) -> EnvMetadata | None:
        """The metadata stored with `key`'s image, or None."""
        ...

    def put_metadata(self, key: EnvKey, metadata: EnvMetadata) -> None:
        """Store `key`'s metadata (after its image: the image tag is what makes a hit)."""
        ...

    def copy_from(self, source: StoreRegistry, key: EnvKey) -> ImageRef:
        """Copy `key`'s image (and metadata, if any) from `source` into this registry."""
        ...

    def keys(self) -> list[EnvKey]:
        """Every key this registry holds an image for."""
        ...

    def delete(self, key: EnvKey) -> None:
        """Remove `key`'s image tag and metadata (blobs are left to the registry's GC)."""
        ...
