"""An image written without an engine, on a real registry and run by a real engine: the base by
digest plus envctl's layer; the same inputs give the same manifest in any repository, a second
write sends no layer, and a failed upload leaves no tag."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.assemble import ImageSettings, assemble
from builder.layer import Layer, write_layer
from hashing import parse_image
from registry.errors import RegistryError
from registry.oci import OciRegistry
from registry.store import StoreRegistry
from tests.conftest import Services, docker

PREFIX = "opt/envctl/env"
SETTINGS = ImageSettings(
    env={"PATH": f"/{PREFIX}/bin:$PATH", "ENVCTL_GREETING": "hello from the layer"},
    labels={"org.envctl.key": "0123456789abcdef0123456789abcdef"},
)


class Reads:
    """The layers' bytes, counted; `fail` cuts the stream after its first chunk."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.count = fail, 0

    def __call__(self, layer: Layer) -> Iterator[bytes]:
        self.count += 1
        data = layer.path.read_bytes()
        yield data[: len(data) // 2]
        if self.fail:
            raise OSError("the disk went away mid-upload")
        yield data[len(data) // 2 :]


def _registry(services: Services, name: str) -> StoreRegistry:
    host = services.workspace_registry.split("/")[0]
    return OciRegistry(f"{services.workspace_registry}/{name}", insecure=[host])


def test_an_assembled_image_runs_is_the_same_anywhere_and_is_sent_once(
    services: Services, tmp_path: Path
) -> None:
    image = parse_image(services.busybox_image)
    base = OciRegistry(image.domain, repository=image.repository, insecure=[image.domain])
    described = base.resolve(image.tag or "latest")
    assert described is not None
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text('#!/bin/sh\necho "$ENVCTL_GREETING"\n')
    (tree / "bin" / "hello").chmod(0o755)
    layer = write_layer(tree, tmp_path / "layer.tar.gz", prefix=PREFIX)
    run = uuid.uuid4().hex[:8]
    first, second = _registry(services, f"asm-{run}-a"), _registry(services, f"asm-{run}-b")
    try:
        reads = Reads()
        args = ([layer], reads, SETTINGS, "linux/amd64")
        one = assemble(base, described.digest, first, "env", *args)
        two = assemble(base, described.digest, second, "env", *args)
        assert one.digest == two.digest, "no time or place in the image"
        assert reads.count == 2
        again = assemble(base, described.digest, first, "again", *args)
        assert again.digest == one.digest
        assert reads.count == 2, "a layer the registry holds is not sent again"
        body = json.loads(one.data)
        assert body["layers"][-1]["digest"] == layer.digest
    finally:
        base.close()
        second.close()
    pinned = first.reference(one.digest)
    first.close()
    docker(services, "pull", pinned)
    assert docker(services, "run", "--rm", "--network", "none", pinned, "hello").strip() == (
        "hello from the layer"
    )
    inspected = json.loads(docker(services, "image", "inspect", pinned))[0]
    assert inspected["RootFS"]["Layers"][-1] == layer.diff_id
    assert inspected["Config"]["Labels"]["org.envctl.key"] == SETTINGS.labels["org.envctl.key"]
    path = next(e for e in inspected["Config"]["Env"] if e.startswith("PATH="))
    assert path.startswith(f"PATH=/{PREFIX}/bin:/"), path


def test_a_failed_upload_leaves_no_tag(services: Services, tmp_path: Path) -> None:
    image = parse_image(services.busybox_image)
    base = OciRegistry(image.domain, repository=image.repository, insecure=[image.domain])
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(b"x" * 100_000)
    layer = write_layer(tree, tmp_path / "layer.tar.gz", prefix=PREFIX)
    target = _registry(services, f"asm-{uuid.uuid4().hex[:8]}")
    try:
        described = base.resolve(image.tag or "latest")
        assert described is not None
        with pytest.raises((OSError, RegistryError)):
            assemble(base, described.digest, target, "env", [layer], Reads(fail=True), SETTINGS,
                     "linux/amd64")  # fmt: skip
        assert target.resolve("env") is None
        assert not target.has_blob(layer.digest)
    finally:
        base.close()
        target.close()
