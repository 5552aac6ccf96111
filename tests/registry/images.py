"""Small, real OCI images made in Python and written through a registry's own primitives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

from registry.base import OCI_INDEX, OCI_MANIFEST, Descriptor, Manifest
from registry.store import StoreRegistry

_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_CONFIG = "application/vnd.oci.image.config.v1+json"


def _descriptor(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar of `files`; returns (blob, diff_id of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def push_image(
    registry: StoreRegistry,
    tag: str | None,
    *,
    files: dict[str, bytes] | None = None,
    arch: str = "amd64",
) -> Manifest:
    """Write a one-layer image under `tag` (None: by digest only); by default with random
    content, so its blobs are its own."""
    layer, diff_id = _layer(files or {"hello.txt": os.urandom(64).hex().encode()})
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {"Cmd": ["/hello.txt"]},
        }
    ).encode()
    blobs = [(_descriptor(_CONFIG, config), config), (_descriptor(_LAYER, layer), layer)]
    for descriptor, data in blobs:
        registry.put_blob(descriptor, iter([data[: len(data) // 2], data[len(data) // 2 :]]))
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blobs[0][0].as_json(),
        "layers": [blobs[1][0].as_json()],
    }
    manifest = Manifest(OCI_MANIFEST, json.dumps(body).encode())
    registry.put_manifest(tag or manifest.digest, manifest)
    return manifest


def push_index(registry: StoreRegistry, tag: str) -> Manifest:
    """A two-platform index whose children are pushed by digest first."""
    children = []
    for arch in ("amd64", "arm64"):
        child = push_image(registry, None, arch=arch)
        children.append(
            {**child.descriptor.as_json(), "platform": {"os": "linux", "architecture": arch}}
        )
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    index = Manifest(OCI_INDEX, json.dumps(body).encode())
    registry.put_manifest(tag, index)
    return index


def layer_of(manifest: Manifest) -> Descriptor:
    """The (first) layer of an image manifest."""
    return next(d for d in manifest.references() if d.media_type != _CONFIG)
