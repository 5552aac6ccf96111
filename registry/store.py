"""`Registry`, implemented once over the primitives of one repository (`StoreRegistry`'s abstract
methods).

Subclasses (`OciRegistry`, `LayoutRegistry`) supply the primitives; lookup with its hit cache,
metadata artifacts and copying between any two stores live here, so every implementation
behaves alike and one contract suite tests them all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager

from hashing import EnvKey, is_key
from registry.base import (
    META_SUFFIX,
    OCI_MANIFEST,
    Descriptor,
    ImageRef,
    Manifest,
)
from registry.errors import ImageNotFound, RegistryError
from registry.metadata import ARTIFACT_TYPE, TITLE, EnvMetadata

_EMPTY_CONFIG = Descriptor(
    "application/vnd.oci.empty.v1+json",
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    2,
)  # the OCI "empty descriptor": the bytes `{}`


class StoreRegistry(ABC):
    """A registry of environment images in one repository; see `registry.base`."""

    def __init__(self) -> None:
        self._hits: dict[EnvKey, ImageRef] = {}
        self._hits_lock = threading.Lock()

    # -- what subclasses provide ---------------------------------------------------------------

    @property
    @abstractmethod
    def address(self) -> str:
        """Where this registry is (`HOST[:PORT]/NAMESPACE` or `oci:PATH`)."""

    @abstractmethod
    def reference(self, tag: str) -> str:
        """The full image reference of `tag` (`HOST/NAMESPACE/env:TAG`, `oci:PATH:TAG`)."""

    @abstractmethod
    def resolve(self, reference: str) -> Descriptor | None:
        """What a tag or digest points to now (one manifest HEAD), or None if absent."""

    @abstractmethod
    def get_manifest(self, reference: str) -> Manifest | None:
        """A manifest by tag or digest, or None if absent."""

    @abstractmethod
    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        """Store a manifest under a tag or its digest; every blob it names must be there."""

    @abstractmethod
    def has_blob(self, digest: str) -> bool:
        """True when the repository has the blob."""

    @abstractmethod
    def read_blob(self, descriptor: Descriptor) -> AbstractContextManager[Iterator[bytes]]:
        """The blob's bytes, streamed; the stream raises RegistryError if they do not match
        the descriptor's digest and size."""

    @abstractmethod
    def put_blob(self, descriptor: Descriptor, chunks: Iterator[bytes]) -> None:
        """Upload a blob; raise RegistryError and keep nothing if the bytes do not match."""

    @abstractmethod
    def mount_blob(self, descriptor: Descriptor, source: StoreRegistry) -> bool:
        """Link a blob from `source` without moving its bytes, where both share storage.
        False when that is not possible: the caller then streams it."""

    @abstractmethod
    def tags(self) -> list[str]:
        """Every tag of the repository."""

    @abstractmethod
    def delete_tag(self, tag: str) -> None:
        """Remove a tag (idempotent)."""

    def close(self) -> None:  # noqa: B027  (a default, not an abstract method)
        """Release connections; nothing to release unless a subclass says otherwise."""

    # -- Registry, once for all ----------------------------------------------------------------

    def lookup(self, key: EnvKey) -> ImageRef | None:
        """The image of `key`, or None. A hit is remembered for ever (tags are immutable)."""
        hit = self._hits.get(key)
        if hit is not None:
            return hit
        found = self.resolve(key)
        if found is None:
            return None  # never remembered: the image may be pushed a moment from now
        return self._remember(key, found.digest)

    def _remember(self, key: EnvKey, digest: str) -> ImageRef:
        hit = ImageRef(key, self.reference(key), digest)
        with self._hits_lock:
            self._hits[key] = hit
        return hit

    def remembered(self, key: EnvKey) -> ImageRef | None:
        """The hit of `key` this object has already confirmed, without asking the registry."""
        return self._hits.get(key)

    def forget(self, key: EnvKey | None = None) -> None:
        """Drop the remembered hit of `key`, or every remembered hit (None), so the next lookup
        asks the registry again. For operators and benchmarks: after a tag was deleted outside
        this object (another process, the registry's own tools), a remembered hit would
        otherwise outlive it."""
        with self._hits_lock:
            if key is None:
                self._hits.clear()
            else:
                self._hits.pop(key, None)

    def get_metadata(self, key: EnvKey) -> EnvMetadata | None:
        """The metadata stored under `KEY.meta`, or None."""
        manifest = self.get_manifest(key + META_SUFFIX)
        if manifest is None:
            return None
        files: dict[str, bytes] = {}
        for layer in json.loads(manifest.data).get("layers", []):
            title = layer.get("annotations", {}).get(TITLE)
            if title:
                with self.read_blob(Descriptor.from_json(layer)) as chunks:
                    files[title] = b"".join(chunks)
        return EnvMetadata.from_files(key, files)

    def put_metadata(self, key: EnvKey, metadata: EnvMetadata) -> None:
        """Write `key`'s metadata as an oras-style artifact under `KEY.meta` (tag last)."""
        self._put_bytes(_EMPTY_CONFIG, b"{}")
        layers = []
        for name, media_type, data in metadata.files():
            descriptor = Descriptor(media_type, _sha256(data), len(data))
            self._put_bytes(descriptor, data)
            layers.append(
                {
                    "mediaType": media_type,
                    "digest": descriptor.digest,
                    "size": descriptor.size,
                    "annotations": {TITLE: name},
                }
            )
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": _EMPTY_CONFIG.media_type,
                "digest": _EMPTY_CONFIG.digest,
                "size": _EMPTY_CONFIG.size,
            },
            "layers": layers,
        }
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        self.put_manifest(key + META_SUFFIX, Manifest(OCI_MANIFEST, data))

    def copy_from(self, source: StoreRegistry, key: EnvKey) -> ImageRef:
        """Copy `key`'s image, then its metadata if it has some, from `source` into here."""
        manifest = copy_tag(source, self, key)  # verified there by digest: a confirmed hit
        metadata = source.get_manifest(key + META_SUFFIX)
        if metadata is not None:
            copy_tag(source, self, key + META_SUFFIX, metadata)
        return self._remember(key, manifest.digest)

    def keys(self) -> list[EnvKey]:
        """Every key with an image here (metadata tags and foreign tags are skipped)."""
        return sorted(EnvKey(tag) for tag in self.tags() if is_key(tag))

    def delete(self, key: EnvKey) -> None:
        """Remove `key`'s image tag and its metadata tag."""
        with self._hits_lock:
            self._hits.pop(key, None)
        self.delete_tag(key + META_SUFFIX)
        self.delete_tag(key)

    def _put_bytes(self, descriptor: Descriptor, data: bytes) -> None:
        # no existence check first: uploading a small blob again is harmless and costs no more
        # than asking whether it is there
        self.put_blob(descriptor, iter((data,)))


def copy_tag(
    source: StoreRegistry, target: StoreRegistry, tag: str, manifest: Manifest | None = None
) -> Manifest:
    """Copy the image under `tag` from `source` to `target`: every blob, verified, then every
    child manifest by digest, and the tag last, so a failure leaves no tag behind. `manifest`
    is the source's manifest of `tag` when the caller already has it."""
    manifest = manifest or source.get_manifest(tag)
    if manifest is None:
        raise ImageNotFound(f"{tag} is not in the source registry", endpoint=source.reference(tag))
    _copy_tree(source, target, manifest)
    target.put_manifest(tag, manifest)
    written = target.resolve(tag)
    if written is None or written.digest != manifest.digest:
        raise RegistryError(
            f"copied manifest has digest {written and written.digest}, not {manifest.digest}",
            endpoint=target.reference(tag),
        )
    return manifest


def _copy_tree(source: StoreRegistry, target: StoreRegistry, manifest: Manifest) -> None:
    for child in manifest.references():
        if manifest.is_index:
            sub = source.get_manifest(child.digest)
            if sub is None:
                raise ImageNotFound(
                    f"index names a missing manifest {child.digest}",
                    endpoint=source.reference(child.digest),
                )
            _copy_tree(source, target, sub)
            target.put_manifest(child.digest, sub)
        elif not target.has_blob(child.digest) and not target.mount_blob(child, source):
            with source.read_blob(child) as chunks:
                target.put_blob(child, chunks)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class VerifiedStream:
    """Wraps a stream of chunks, checking size and sha256 as they pass; raises at the end
    (before the consumer can finish) when they do not match the descriptor."""

    def __init__(self, descriptor: Descriptor, chunks: Iterator[bytes], endpoint: str) -> None:
        self._descriptor = descriptor
        self._chunks = chunks
        self._endpoint = endpoint

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        pending: bytes | None = None
        for chunk in self._chunks:
            if pending is not None:
                yield pending
            digest.update(chunk)
            size += len(chunk)
            if size > self._descriptor.size:
                raise RegistryError(
                    f"blob {self._descriptor.digest} is longer than {self._descriptor.size} bytes",
                    endpoint=self._endpoint,
                )
            pending = chunk
        got = "sha256:" + digest.hexdigest()
        if size != self._descriptor.size or got != self._descriptor.digest:
            raise RegistryError(
                f"blob {self._descriptor.digest} arrived corrupt ({size} bytes, {got})",
                endpoint=self._endpoint,
            )
        if pending is not None:
            yield pending  # the last chunk only once it is known good
