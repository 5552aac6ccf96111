"""One contract, every implementation: OciRegistry on the real registry, and LayoutRegistry.

Every test here runs against each implementation (and copying against each pair), so they
behave alike; what is specific to one lives in its own test module.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hashing import EnvKey
from registry.base import Descriptor, ImageRef, Manifest, Registry
from registry.errors import RegistryError
from registry.metadata import EnvMetadata
from registry.store import StoreRegistry
from tests.conftest import Services
from tests.registry.images import layer_of, push_image, push_index

Factory = Callable[[], StoreRegistry]
KINDS = ["oci", "layout"]


def _key() -> EnvKey:
    return EnvKey(uuid.uuid4().hex)


@pytest.fixture
def make(request: pytest.FixtureRequest, tmp_path: Path, services: Services) -> Iterator[Factory]:
    """Makes registries of the kind under test: each call a new instance on the SAME storage
    (a second process's view), each test its own storage."""
    made: list[StoreRegistry] = []
    namespace = f"{services.workspace_registry}/contract-{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "layout"

    def factory() -> StoreRegistry:
        registry = _new(request.param, namespace, folder)
        made.append(registry)
        return registry

    yield factory
    for registry in made:
        _close(registry)


def _new(kind: str, namespace: str, folder: Path) -> StoreRegistry:
    if kind == "oci":
        from registry.oci import OciRegistry

        return OciRegistry(namespace)
    from registry.layout import LayoutRegistry

    return LayoutRegistry(folder)


def _close(registry: StoreRegistry) -> None:
    close = getattr(registry, "close", None)
    if close is not None:
        close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make" in metafunc.fixturenames:
        metafunc.parametrize("make", KINDS, indirect=True)


def _metadata(key: EnvKey) -> EnvMetadata:
    return EnvMetadata(
        key=key,
        spec_json='["envctl.key/1",{}]',
        lock="version: 1\n",
        dockerfile="FROM scratch\n",
        build_log="step 1\nstep 2\n",
        facts={"builder_version": "0.1.0", "duration_seconds": 1.5},
    )


def test_it_is_a_registry(make: Factory) -> None:
    assert isinstance(make(), Registry)


def test_an_unknown_key_is_a_miss(make: Factory) -> None:
    registry = make()
    assert registry.lookup(_key()) is None
    assert registry.keys() == []
    assert registry.get_metadata(_key()) is None


def test_a_pushed_image_is_found_by_its_key(make: Factory) -> None:
    registry, key = make(), _key()
    manifest = push_image(registry, key)
    hit = registry.lookup(key)
    assert hit == ImageRef(key, registry.reference(key), manifest.digest, "workspace")
    assert hit.image.endswith(f":{key}")
    assert registry.keys() == [key]


def test_a_hit_is_remembered_and_a_miss_is_not(make: Factory) -> None:
    registry, other_view, key = make(), make(), _key()
    assert registry.lookup(key) is None
    push_image(other_view, key)
    assert registry.remembered(key) is None  # nothing confirmed yet: it does not ask
    hit = registry.lookup(key)  # a miss was not cached: the image is seen at once
    assert hit is not None
    other_view.delete(key)
    assert registry.lookup(key) == hit, "a confirmed hit is kept (tags are immutable)"
    assert registry.remembered(key) == hit
    assert make().lookup(key) is None


def test_metadata_round_trips_and_is_not_a_key(make: Factory) -> None:
    registry, key = make(), _key()
    push_image(registry, key)
    registry.put_metadata(key, _metadata(key))
    assert make().get_metadata(key) == _metadata(key)
    assert registry.keys() == [key]


def test_delete_removes_image_and_metadata_and_is_idempotent(make: Factory) -> None:
    registry, key = make(), _key()
    push_image(registry, key)
    registry.put_metadata(key, _metadata(key))
    registry.delete(key)
    registry.delete(key)
    fresh = make()
    assert fresh.lookup(key) is None
    assert fresh.get_metadata(key) is None
    assert fresh.keys() == []


def test_a_manifest_naming_a_missing_blob_is_refused(make: Factory) -> None:
    registry, source, key = make(), make(), _key()
    manifest = push_image(source, None)  # blobs exist under no tag we use
    body = manifest.data.replace(layer_of(manifest).digest.encode(), b"sha256:" + b"0" * 64)
    with pytest.raises(RegistryError):
        registry.put_manifest(key, Manifest(manifest.media_type, body))
    assert make().lookup(key) is None


def test_a_blob_that_does_not_match_its_digest_is_refused(make: Factory) -> None:
    registry = make()
    claimed = Descriptor("application/octet-stream", "sha256:" + "1" * 64, 5)
    with pytest.raises(RegistryError):
        registry.put_blob(claimed, iter([b"hello"]))
    assert not registry.has_blob(claimed.digest)


def test_a_blob_stream_that_fails_midway_keeps_nothing(make: Factory) -> None:
    registry = make()
    data = b"x" * 100_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    descriptor = Descriptor("application/octet-stream", digest, len(data))

    def broken() -> Iterator[bytes]:
        yield data[:50_000]
        raise OSError("source went away")

    with pytest.raises((RegistryError, OSError)):
        registry.put_blob(descriptor, broken())
    assert not registry.has_blob(descriptor.digest)


def test_reading_verifies_size_and_digest(make: Factory) -> None:
    registry = make()
    manifest = push_image(registry, _key())
    layer = layer_of(manifest)
    with registry.read_blob(layer) as chunks:
        assert len(b"".join(chunks)) == layer.size
    lying = Descriptor(layer.media_type, layer.digest, layer.size + 1)
    with pytest.raises(RegistryError), registry.read_blob(lying) as chunks:
        b"".join(chunks)


@pytest.mark.parametrize("source_kind", KINDS)
def test_copy_gives_the_same_digest_and_brings_metadata(
    make: Factory, source_kind: str, services: Services, tmp_path: Path
) -> None:
    source = _new(
        source_kind,
        f"{services.global_registry}/contract-src-{uuid.uuid4().hex[:12]}",
        tmp_path / "source-layout",
    )
    try:
        key = _key()
        manifest = push_image(source, key)
        source.put_metadata(key, _metadata(key))
        target = make()
        hit = target.copy_from(source, key)
        assert hit == ImageRef(key, target.reference(key), manifest.digest)
        assert make().get_metadata(key) == _metadata(key)
        index_key = _key()
        index = push_index(source, index_key)
        assert target.copy_from(source, index_key).digest == index.digest
        for child in index.references():
            assert target.get_manifest(child.digest) is not None
    finally:
        _close(source)


def test_copying_a_missing_key_raises(make: Factory) -> None:
    with pytest.raises(RegistryError):
        make().copy_from(make(), _key())
