"""An image written without an engine: a base image (by digest) plus envctl's own layers, with a
config and a manifest envctl writes, the tag last.

Nothing of the image runs: the base's manifest and config are read from its registry, its layers
are linked into the target (present already, mounted within one registry, else streamed), the
new layers are sent only when the target lacks them, several at a time, then the config, then
the manifest under its digest and, last, under the tag. A failure anywhere leaves no tag. The
config holds no time and no host: the same base, layers and settings give the same manifest
digest on every host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from builder.errors import BuildError
from builder.layer import LAYER_GZIP, Layer
from hashing.imageref import InvalidReference, normalize_platform
from registry.base import OCI_MANIFEST, Descriptor, Manifest
from registry.store import StoreRegistry

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_CONFIG = 8 << 20  # bytes of a base image's config read into memory, at most
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's
UPLOADS = 4  # blobs sent at once: a registry's upload is latency-bound, not CPU-bound
# a base layer's Docker media type, named as OCI names the same bytes
_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@dataclass(frozen=True)
class ImageSettings:
    """What the new config sets over the base's: variables (PATH's value may name `$PATH`,
    the base's), labels and the command."""

    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cmd: Sequence[str] | None = None


def assemble(
    base: StoreRegistry,
    base_digest: str,
    target: StoreRegistry,
    tag: str | None,
    layers: Sequence[Layer],
    read: Callable[[Layer], Iterator[bytes]],
    settings: ImageSettings,
    platform: str,
    *,
    below: Manifest | None = None,
    on_send: Callable[[Layer], None] | None = None,
) -> Manifest:
    """Write `base_digest` of `base` plus `layers` (read with `read`) to `target` under `tag`
    (None: by digest only); the manifest written. `platform` (normalized, `linux/amd64`) picks
    the base's manifest when it is an index; `below` is that manifest when the caller has read
    it already. `on_send` hears of each layer the target lacked, once it is sent."""
    manifest = below or platform_manifest(base, base_digest, platform)
    body = json.loads(manifest.data)
    config = image_config(base, base_digest, manifest)
    base_layers = [Descriptor.from_json(d) for d in body.get("layers", [])]

    def send(layer: Layer) -> None:
        if _send(target, layer, read) and on_send is not None:
            on_send(layer)

    with ThreadPoolExecutor(UPLOADS) as pool:
        copies = [pool.submit(_link, base, target, d) for d in base_layers]
        sends = [pool.submit(send, layer) for layer in layers]
        for future in (*copies, *sends):
            future.result()

    config = _config(config, layers, settings)
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_out = Descriptor(OCI_CONFIG, _sha256(config_bytes), len(config_bytes))
    if not target.has_blob(config_out.digest):
        target.put_blob(config_out, iter((config_bytes,)))
    out = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_out.as_json(),
        "layers": [_oci(d).as_json() for d in base_layers]
        + [Descriptor(layer.media_type, layer.digest, layer.size).as_json() for layer in layers],
        "annotations": {"org.opencontainers.image.base.digest": manifest.digest},
    }
    written = Manifest(
        OCI_MANIFEST, json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
    )
    target.put_manifest(written.digest, written)
    if tag is not None:
        target.put_manifest(tag, written)  # last: before this, nothing names the image
    return written


def layer_count(manifest: Manifest) -> int:
    """How many layers an image manifest lists."""
    return len(json.loads(manifest.data).get("layers", []))


def image_config(image: StoreRegistry, digest: str, manifest: Manifest) -> dict[str, Any]:
    """The config of an image (`manifest`, its platform's), checked: a BuildError when it is
    no image config, or when it has ONBUILD triggers. Docker runs those in the build FROM the
    image, reading whatever images they name; envctl writes the environment's image itself and
    runs none, and a build that runs them (a docker step, or a stage FROM such an image) would
    read images no one checked."""
    config_descriptor = Descriptor.from_json(json.loads(manifest.data)["config"])
    if config_descriptor.size > MAX_CONFIG:
        raise BuildError(f"the image's config is larger than {MAX_CONFIG} bytes")
    with image.read_blob(config_descriptor) as chunks:
        try:
            config = json.loads(b"".join(chunks))
        except ValueError:
            config = None
    if not isinstance(config, dict) or not isinstance(config.get("config") or {}, dict):
        raise BuildError(f"the image {image.reference(digest)} has no image config")
    if (config.get("config") or {}).get("OnBuild"):
        raise BuildError(
            f"the image {image.reference(digest)} has ONBUILD triggers, which envctl does not "
            "run: use an image without them"
        )
    return config


def platform_manifest(base: StoreRegistry, digest: str, platform: str) -> Manifest:
    """The image manifest of `digest` for `platform`: itself, or its index's entry."""
    manifest = base.get_manifest(digest)
    if manifest is None:
        raise BuildError(f"the base image {base.reference(digest)} is gone from its registry")
    if not manifest.is_index:
        return manifest
    for child in json.loads(manifest.data).get("manifests", []):
        if not isinstance(child, dict) or not isinstance(child.get("digest"), str):
            continue
        entry = child.get("platform")
        if isinstance(entry, dict) and _platform_of(entry) == platform:
            return platform_manifest(base, child["digest"], platform)
    raise BuildError(f"the base image {base.reference(digest)} has no {platform} manifest")


def _platform_of(entry: Mapping[str, Any]) -> str | None:
    """An index entry's platform, normalized; None for one envctl does not build (an
    attestation's `unknown/unknown`)."""
    text = f"{entry.get('os')}/{entry.get('architecture')}"
    if entry.get("variant"):
        text += f"/{entry['variant']}"
    try:
        return normalize_platform(text)
    except InvalidReference:
        return None


def _link(base: StoreRegistry, target: StoreRegistry, descriptor: Descriptor) -> None:
    if target.has_blob(descriptor.digest) or target.mount_blob(descriptor, base):
        return
    with base.read_blob(descriptor) as chunks:
        target.put_blob(descriptor, chunks)


def _send(target: StoreRegistry, layer: Layer, read: Callable[[Layer], Iterator[bytes]]) -> bool:
    """Send `layer` unless `target` has it; whether it was sent."""
    if target.has_blob(layer.digest):
        return False
    target.put_blob(Descriptor(layer.media_type, layer.digest, layer.size), read(layer))
    return True


def _config(
    base: dict[str, Any], layers: Sequence[Layer], settings: ImageSettings
) -> dict[str, Any]:
    """The base's config with the layers' diff_ids, the settings, and no time or host."""
    config = dict(base)
    inner = dict(config.get("config") or {})
    env = dict(item.split("=", 1) for item in inner.get("Env") or [] if "=" in item)
    for name, value in settings.env.items():
        # a base without PATH (`docker import`, FROM scratch) gets Docker's default under it
        below = env.get("PATH") or DEFAULT_PATH
        env[name] = value.replace("$PATH", below) if name == "PATH" else value
    inner["Env"] = [f"{name}={value}" for name, value in env.items()]
    inner["Labels"] = {**(inner.get("Labels") or {}), **settings.labels}
    if settings.cmd is not None:
        inner["Cmd"] = list(settings.cmd)
    config["config"] = inner
    rootfs = dict(config.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), *(layer.diff_id for layer in layers)]
    config["rootfs"] = rootfs
    history = list(config.get("history") or [])
    history += [{"created_by": "envctl", "comment": layer.diff_id} for layer in layers]
    config["history"] = history
    for volatile in ("created", "container", "container_config", "hostname", "docker_version"):
        config.pop(volatile, None)
    return config


def _oci(descriptor: Descriptor) -> Descriptor:
    if descriptor.media_type != _DOCKER_LAYER:
        return descriptor
    return Descriptor(LAYER_GZIP, descriptor.digest, descriptor.size)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
