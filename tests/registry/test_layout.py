"""What is specific to `LayoutRegistry`: the files on disk, skopeo and Docker reading them,
concurrent writers, and damage on disk. The behaviour all registries share is in test_contract."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hashing import EnvKey
from registry.base import OCI_INDEX, OCI_MANIFEST, Descriptor, Manifest
from registry.errors import RegistryError
from registry.layout import REF_NAME, LayoutRegistry
from registry.store import copy_tag
from tests.conftest import Services, docker
from tests.registry.images import layer_of, push_image, push_index

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static, which scripts/services installs


def _key() -> EnvKey:
    return EnvKey(uuid.uuid4().hex)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(registry: LayoutRegistry, digest: str) -> Path:
    return registry.path / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _leftovers(registry: LayoutRegistry) -> list[str]:
    return sorted(p.name for p in registry.path.rglob(".tmp-*"))


def _skopeo(*args: str) -> str:
    result = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        pytest.fail(f"skopeo {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


# -- the files on disk ---------------------------------------------------------------------------


def test_a_missing_layout_is_an_empty_registry_and_reading_creates_nothing(
    tmp_path: Path,
) -> None:
    registry = LayoutRegistry(tmp_path / "nowhere")
    assert registry.tags() == []
    assert registry.lookup(_key()) is None
    assert registry.resolve("sha256:" + "a" * 64) is None
    assert not registry.has_blob("sha256:" + "a" * 64)
    registry.delete(_key())
    assert not registry.path.exists()


def test_references_are_skopeo_oci_transport_names(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    digest = "sha256:" + "c" * 64
    assert registry.address == f"oci:{tmp_path}/layout"
    assert registry.reference("abc") == f"oci:{tmp_path}/layout:abc"
    assert registry.reference(digest) == f"oci:{tmp_path}/layout@{digest}"


def test_the_files_follow_the_image_layout_spec(tmp_path: Path) -> None:
    registry, key, index_key = LayoutRegistry(tmp_path / "layout"), _key(), _key()
    image = push_image(registry, key)
    index = push_index(registry, index_key)

    assert json.loads((registry.path / "oci-layout").read_bytes()) == {
        "imageLayoutVersion": "1.0.0"
    }
    body = json.loads((registry.path / "index.json").read_bytes())
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    tagged = {e["annotations"][REF_NAME]: e for e in body["manifests"] if "annotations" in e}
    assert tagged == {
        key: {**image.descriptor.as_json(), "annotations": {REF_NAME: key}},
        index_key: {**index.descriptor.as_json(), "annotations": {REF_NAME: index_key}},
    }
    # Children put by digest are listed untagged, as skopeo lists them.
    untagged = [e for e in body["manifests"] if "annotations" not in e]
    assert untagged == [child.as_json() for child in index.references()]
    # Every blob and every manifest is a file named by the sha256 of its bytes.
    files = {p.name: p.read_bytes() for p in (registry.path / "blobs" / "sha256").iterdir()}
    assert all(name == hashlib.sha256(data).hexdigest() for name, data in files.items())
    children = [registry.get_manifest(child.digest) for child in index.references()]
    for manifest in (image, index, *children):
        assert manifest is not None
        assert files[manifest.digest.removeprefix("sha256:")] == manifest.data
    assert registry.tags() == sorted([key, index_key])
    assert _leftovers(registry) == []


def test_a_manifest_is_found_by_digest_tagged_untagged_or_only_on_disk(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    manifest = push_image(registry, None)
    found = Descriptor(OCI_MANIFEST, manifest.digest, len(manifest.data))
    assert registry.resolve(manifest.digest) == found
    registry.put_manifest("tagged", manifest)
    entries = json.loads((registry.path / "index.json").read_bytes())["manifests"]
    assert len(entries) == 1, "tagging drops the now redundant untagged entry"
    registry.delete_tag("tagged")
    registry.delete_tag("tagged")
    assert registry.tags() == []
    # No entry left: the blob's own mediaType says it is a manifest, as in a registry before GC.
    assert registry.resolve(manifest.digest) == found
    assert registry.resolve(layer_of(manifest).digest) is None, "a layer is not a manifest"
    assert registry.resolve("sha256:" + "d" * 64) is None


# -- skopeo and Docker read what it writes, it reads what skopeo writes --------------------------


def test_skopeo_inspects_an_image_and_an_index(tmp_path: Path) -> None:
    registry, key, index_key = LayoutRegistry(tmp_path / "layout"), _key(), _key()
    image = push_image(registry, key)
    index = push_index(registry, index_key)
    inspected = json.loads(_skopeo("inspect", registry.reference(key)))
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [layer_of(image).digest]
    assert _skopeo("inspect", "--raw", registry.reference(index_key)).encode() == index.data
    arm = json.loads(_skopeo("inspect", "--override-arch", "arm64", registry.reference(index_key)))
    assert arm["Architecture"] == "arm64"


def test_docker_runs_an_image_it_writes(tmp_path: Path, services: Services) -> None:
    registry, key = LayoutRegistry(tmp_path / "layout"), _key()
    diff_id = _push_busybox(registry, key, greeting=f"hello from {key}\n")
    name = f"envctl-layout-test:{key}"
    # skopeo's docker-daemon: transport ignores DOCKER_HOST; without the flag it dials
    # /var/run/docker.sock and fails with "io: read/write on closed pipe".
    _skopeo(
        "copy",
        "--quiet",
        "--dest-daemon-host",
        services.docker_host,
        registry.reference(key),
        f"docker-daemon:{name}",
    )
    try:
        inspected = json.loads(docker(services, "image", "inspect", name))[0]
        assert inspected["RootFS"]["Layers"] == [diff_id]
        assert docker(services, "run", "--rm", name) == f"hello from {key}\n"
    finally:
        docker(services, "image", "rm", name)


def _push_busybox(registry: LayoutRegistry, tag: str, greeting: str) -> str:
    """A one-layer image of busybox-static whose command prints `greeting`; its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (
            ("bin/busybox", BUSYBOX.read_bytes(), 0o755),
            ("greeting.txt", greeting.encode(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = _sha256(raw.getvalue())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {"Cmd": ["/bin/busybox", "cat", "/greeting.txt"]},
        }
    ).encode()
    descriptors = []
    for media_type, data in (
        ("application/vnd.oci.image.config.v1+json", config),
        ("application/vnd.oci.image.layer.v1.tar+gzip", layer),
    ):
        descriptor = Descriptor(media_type, _sha256(data), len(data))
        registry.put_blob(descriptor, iter([data]))
        descriptors.append(descriptor.as_json())
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    registry.put_manifest(tag, Manifest(OCI_MANIFEST, json.dumps(body).encode()))
    return diff_id


def test_it_reads_and_copies_what_skopeo_writes(tmp_path: Path, services: Services) -> None:
    key = _key()
    written = LayoutRegistry(tmp_path / "by-skopeo")
    _skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{services.busybox_image}",
        written.reference(key),
    )
    hit = written.lookup(key)
    assert hit is not None
    copy = LayoutRegistry(tmp_path / "copy")
    assert copy.copy_from(written, key).digest == hit.digest
    manifest = copy.get_manifest(key)
    assert manifest is not None
    for blob in manifest.references():
        with copy.read_blob(blob) as chunks:
            assert sum(map(len, chunks)) == blob.size
        # Both layouts are on one filesystem: the blob was linked, not copied.
        assert _blob(copy, blob.digest).stat().st_ino == _blob(written, blob.digest).stat().st_ino


# -- mounting ------------------------------------------------------------------------------------


def test_a_mount_across_filesystems_falls_back_to_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target, key = LayoutRegistry(tmp_path / "a"), LayoutRegistry(tmp_path / "b"), _key()
    layer = layer_of(push_image(source, key))

    real_link = os.link

    def cross_device(origin: Path, target: Path) -> None:
        if Path(origin).parent.name == "sha256":  # blobs only: index.json is linked too
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(origin, target)

    monkeypatch.setattr(os, "link", cross_device)
    assert not target.mount_blob(layer, source)
    target.copy_from(source, key)
    assert _blob(target, layer.digest).read_bytes() == _blob(source, layer.digest).read_bytes()
    assert _blob(target, layer.digest).stat().st_ino != _blob(source, layer.digest).stat().st_ino


def test_a_blob_of_the_wrong_size_is_not_mounted(tmp_path: Path) -> None:
    source, target = LayoutRegistry(tmp_path / "a"), LayoutRegistry(tmp_path / "b")
    layer = layer_of(push_image(source, _key()))
    assert not target.mount_blob(Descriptor(layer.media_type, layer.digest, 1), source)
    assert target.mount_blob(layer, source)
    assert target.mount_blob(layer, source), "mounting twice is fine"


# -- concurrent writers --------------------------------------------------------------------------

WRITERS, TAGS_EACH = 3, 15


def _write_tags(path: str, prefix: str) -> None:
    registry = LayoutRegistry(path)
    for n in range(TAGS_EACH):
        push_image(registry, f"{prefix}-{n}")


def test_concurrent_writers_lose_no_tag_and_readers_never_see_half_an_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "layout"
    index_file = path / "index.json"
    stop, torn = threading.Event(), []

    def read_until_stopped() -> None:
        while not stop.is_set():
            try:
                data = index_file.read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(data)
            except ValueError:
                torn.append(data)

    reader = threading.Thread(target=read_until_stopped)
    reader.start()
    # spawn, not fork: each writer is a fresh process, as separate envctl workers would be.
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_tags, args=(str(path), f"w{n}")) for n in range(WRITERS)
    ]
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=120)
    finally:
        stop.set()
        reader.join()
    assert [w.exitcode for w in writers] == [0] * WRITERS
    assert torn == []
    registry = LayoutRegistry(path)
    expected = sorted(f"w{w}-{n}" for w in range(WRITERS) for n in range(TAGS_EACH))
    assert registry.tags() == expected
    for tag in expected:
        assert registry.get_manifest(tag) is not None
    assert _leftovers(registry) == []


# -- damage and failures -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_a_damaged_blob_on_disk_raises_when_read(tmp_path: Path, damage: str) -> None:
    registry, key = LayoutRegistry(tmp_path / "layout"), _key()
    manifest = push_image(registry, key)
    layer = layer_of(manifest)
    _damage(_blob(registry, layer.digest), damage)
    with pytest.raises(RegistryError, match=layer.digest), registry.read_blob(layer) as chunks:
        b"".join(chunks)
    if damage != "flip":  # a mount checks the size only; a same-size flip would be linked
        target = LayoutRegistry(tmp_path / "target")
        with pytest.raises(RegistryError):
            copy_tag(registry, target, key)
        assert target.tags() == [], "a failed copy leaves no tag"
    _damage(_blob(registry, manifest.digest), damage)
    with pytest.raises(RegistryError):
        registry.get_manifest(key)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.chmod(0o644)
    damaged = {
        "flip": data[:-1] + bytes([data[-1] ^ 1]),
        "truncate": data[:-1],
        "extend": data + b"\n",
    }[how]
    path.write_bytes(damaged)


def test_an_interrupted_put_blob_leaves_no_file(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    data = os.urandom(300_000)
    descriptor = Descriptor("application/octet-stream", _sha256(data), len(data))
    failure = ConnectionResetError("the source went away")

    def broken() -> Iterator[bytes]:
        yield data[:100_000]
        raise failure

    with pytest.raises(ConnectionResetError) as raised:
        registry.put_blob(descriptor, broken())
    assert raised.value is failure, "the source's own error reaches the caller"
    for wrong in ([data[:-1]], [data, b"x"], [data[:-1] + b"x"]):
        with pytest.raises(RegistryError, match=descriptor.digest):
            registry.put_blob(descriptor, iter(wrong))
    assert not registry.has_blob(descriptor.digest)
    assert _leftovers(registry) == []
    assert list((registry.path / "blobs" / "sha256").iterdir()) == []


def test_a_manifest_with_missing_blobs_writes_nothing(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor("application/json", "sha256:" + "e" * 64, 2).as_json(),
        "layers": [],
    }
    manifest = Manifest(OCI_MANIFEST, json.dumps(body).encode())
    with pytest.raises(RegistryError, match="e" * 64):
        registry.put_manifest("tag", manifest)
    assert not registry.has_blob(manifest.digest)
    assert registry.tags() == []


@pytest.mark.parametrize(
    "content", [b'{"manifests": [', b"[]", b'{"manifests": 3}', b'{"manifests": [{"size": 1}]}']
)
def test_a_corrupt_index_json_is_an_error_not_a_miss(tmp_path: Path, content: bytes) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    push_image(registry, "tag")
    (registry.path / "index.json").write_bytes(content)
    for read in (registry.tags, lambda: registry.lookup(_key())):
        with pytest.raises(RegistryError, match=r"corrupt layout: index\.json") as raised:
            read()
        assert raised.value.endpoint == registry.address
    with pytest.raises(RegistryError, match=r"index\.json"):
        push_image(registry, "another")


def test_io_failures_are_registry_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    registry = LayoutRegistry(tmp_path / "file")
    for act in (registry.tags, lambda: push_image(registry, "tag")):
        with pytest.raises(RegistryError) as raised:
            act()
        assert raised.value.endpoint == registry.address


def test_an_unknown_layout_version_is_refused(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    push_image(registry, "tag")
    (registry.path / "oci-layout").write_text('{"imageLayoutVersion": "9.0.0"}')
    with pytest.raises(RegistryError, match=r"9\.0\.0"):
        push_image(registry, "other")


@pytest.mark.parametrize("digest", ["sha256:../../../etc/passwd", "sha512:" + "a" * 128, "x"])
def test_only_sha256_digests_name_files(tmp_path: Path, digest: str) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    with pytest.raises(RegistryError, match="unsupported digest"):
        registry.has_blob(digest)


def test_tags_must_be_valid_tags(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    manifest = push_image(registry, None)
    for tag in ("", "-x", "a/b", "a:b", "x" * 129):
        with pytest.raises(RegistryError, match="invalid tag"):
            registry.put_manifest(tag, manifest)


def test_the_layout_can_be_removed_and_starts_afresh(tmp_path: Path) -> None:
    registry = LayoutRegistry(tmp_path / "layout")
    push_image(registry, "one")
    shutil.rmtree(registry.path)
    assert registry.tags() == []
    push_image(registry, "two")
    assert registry.tags() == ["two"]
