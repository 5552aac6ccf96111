"""An image saved by the Docker engine (`docker save`), written into any StoreRegistry.

The engine pushes only to registries it can reach over HTTP; an OCI layout folder (the embedded
workspace) receives built images this way instead: every layer and the config as blobs, digests
checked, then the manifest under the tag, last, so a failure leaves no tag. Layers stay
uncompressed, as the engine saved them: their digests are then the image's diff_ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from builder.errors import BuildError
from builder.layer import ChunkReader
from registry.base import OCI_MANIFEST, Descriptor, Manifest
from registry.store import StoreRegistry

_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER = "application/vnd.oci.image.layer.v1.tar"
_CHUNK = 1 << 20


def import_archive(archive: Path, registry: StoreRegistry, tag: str) -> str:
    """Write the one image in `archive` (docker save format) under `tag`; its manifest digest."""
    with tarfile.open(archive) as tar:
        (entry,) = json.load(_member(tar, "manifest.json"))
        config = _member(tar, entry["Config"]).read()
        blobs = [Descriptor(_CONFIG, _sha256(config), len(config))]
        registry.put_blob(blobs[0], iter((config,)))
        for name in entry["Layers"]:
            layer = Descriptor(_LAYER, _digest(_member(tar, name)), tar.getmember(name).size)
            if not registry.has_blob(layer.digest):
                registry.put_blob(layer, _chunks(_member(tar, name)))
            blobs.append(layer)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blobs[0].as_json(),
        "layers": [layer.as_json() for layer in blobs[1:]],
    }
    manifest = Manifest(OCI_MANIFEST, json.dumps(body, separators=(",", ":")).encode())
    registry.put_manifest(tag, manifest)
    return manifest.digest


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = tar.extractfile(name)
    if handle is None:
        raise BuildError(f"the engine's saved image has no file {name}")
    return handle


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk


def _digest(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(handle):
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def export_archive(registry: StoreRegistry, digest: str, tag: str, out: Path) -> None:
    """Write the image `digest` of `registry` to `out` in the `docker save` format, named `tag`,
    for an engine to load (its layers as they are stored: the engine reads gzip or plain)."""
    manifest = registry.get_manifest(digest)
    if manifest is None or manifest.is_index:
        raise BuildError(f"{registry.reference(digest)} is not an image manifest")
    body = json.loads(manifest.data)
    config = Descriptor.from_json(body["config"])
    layers = [Descriptor.from_json(d) for d in body.get("layers", [])]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        names = []
        for descriptor in (config, *layers):
            name = f"blobs/sha256/{descriptor.digest.removeprefix('sha256:')}"
            if name in names:
                continue
            names.append(name)
            info = tarfile.TarInfo(name)
            info.size = descriptor.size
            with registry.read_blob(descriptor) as chunks:
                tar.addfile(info, cast(IO[bytes], ChunkReader(chunks)))
        entry = [{
            "Config": names[0],
            "RepoTags": [tag],
            "Layers": [f"blobs/sha256/{d.digest.removeprefix('sha256:')}" for d in layers],
        }]  # fmt: skip
        data = json.dumps(entry).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
