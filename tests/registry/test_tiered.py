"""Workspace then global on the real registries: promotion, and failures that are not misses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hashing import EnvKey
from registry.errors import RegistryError, RegistryUnavailable
from registry.metadata import EnvMetadata
from registry.oci import OciRegistry
from registry.tiered import TieredRegistry
from tests.conftest import Services, docker
from tests.registry.images import layer_of, push_image
from tests.registry.servers import RegistryProcess, free_port


def _key() -> EnvKey:
    return EnvKey(uuid.uuid4().hex)


@pytest.fixture
def tiers(services: Services) -> Iterator[tuple[OciRegistry, OciRegistry]]:
    """A fresh namespace in each real registry: (workspace, global)."""
    ns = f"tiered-{uuid.uuid4().hex[:12]}"
    workspace = OciRegistry(f"{services.workspace_registry}/{ns}")
    global_ = OciRegistry(f"{services.global_registry}/{ns}")
    yield workspace, global_
    workspace.close()
    global_.close()


def test_a_workspace_hit_is_a_workspace_hit(tiers: tuple[OciRegistry, OciRegistry]) -> None:
    workspace, global_ = tiers
    key = _key()
    manifest = push_image(workspace, key)
    hit = TieredRegistry(workspace, global_).lookup(key)
    assert hit is not None
    assert (hit.source, hit.digest) == ("workspace", manifest.digest)


def test_a_global_hit_is_promoted_once(tiers: tuple[OciRegistry, OciRegistry]) -> None:
    workspace, global_ = tiers
    key = _key()
    manifest = push_image(global_, key)
    global_.put_metadata(key, EnvMetadata(key=key, spec_json="[]", build_log="built\n"))
    tiered = TieredRegistry(workspace, global_)
    first = tiered.lookup(key)
    assert first is not None
    assert first.source == "global"
    assert first.image == workspace.reference(key)
    assert first.digest == manifest.digest
    again = TieredRegistry(OciRegistry(workspace.address), global_).lookup(key)
    assert again is not None
    assert again.source == "workspace"
    assert workspace.get_metadata(key) == global_.get_metadata(key)


def test_a_miss_in_both_tiers_is_none(tiers: tuple[OciRegistry, OciRegistry]) -> None:
    assert TieredRegistry(*tiers).lookup(_key()) is None


def test_a_promoted_docker_image_runs_from_the_workspace(
    services: Services, tiers: tuple[OciRegistry, OciRegistry]
) -> None:
    workspace, global_ = tiers
    key = _key()
    in_global = global_.reference(key)
    docker(services, "tag", services.busybox_image, in_global)
    docker(services, "push", in_global)
    hit = TieredRegistry(workspace, global_).lookup(key)
    assert hit is not None
    assert hit.digest == global_.resolve(key).digest  # type: ignore[union-attr]
    docker(services, "rmi", in_global)
    out = docker(services, "run", "--rm", "--network", "none", hit.image, "echo", "promoted")
    assert out.strip() == "promoted"
    docker(services, "rmi", hit.image)


def _blob_file(services: Services, tier: str, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    root = Path(os.environ["ENVCTL_SERVICES_DIR"]) / "registry" / tier / "storage"
    return root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_blob_in_the_global_registry_leaves_no_tag(
    services: Services, tiers: tuple[OciRegistry, OciRegistry], damage: str
) -> None:
    workspace, global_ = tiers
    key = _key()
    layer = layer_of(push_image(global_, key))
    data_file = _blob_file(services, "global", layer.digest)
    data = data_file.read_bytes()
    data_file.write_bytes(data[:-10] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(RegistryError):
        TieredRegistry(workspace, global_).lookup(key)
    assert OciRegistry(workspace.address).lookup(key) is None
    assert not workspace.has_blob(layer.digest)


def test_an_unreachable_global_registry_raises_and_is_never_a_miss(
    tiers: tuple[OciRegistry, OciRegistry],
) -> None:
    workspace, _ = tiers
    down = OciRegistry(f"127.0.0.1:{free_port()}/global")
    with pytest.raises(RegistryUnavailable) as info:
        TieredRegistry(workspace, down).lookup(_key())
    assert "127.0.0.1" in info.value.endpoint


def test_a_registry_stopped_mid_lookup_raises(tmp_path: Path, services: Services) -> None:
    """A real registry process that answers once, then is stopped: the next lookup raises."""
    own = RegistryProcess(tmp_path / "registry")
    own.start()
    try:
        registry = OciRegistry(f"{own.host}/ns", retries=0)
        tiered = TieredRegistry(OciRegistry(f"{services.workspace_registry}/x"), registry)
        assert tiered.lookup(_key()) is None  # it answers: a real miss
        own.stop()
        with pytest.raises(RegistryUnavailable):
            tiered.lookup(_key())
    finally:
        own.stop()
