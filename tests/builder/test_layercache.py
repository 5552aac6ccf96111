"""The host's layer cache: a layer made once per key, equal layers stored once, and a corrupt or
truncated blob never sent twice: its entry goes and the next build makes it again."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import LayerError
from builder.layer import Layer, write_layer
from builder.layercache import LayerCache


class Maker:
    """Writes the layer of one small tree, counting how often it is asked."""

    def __init__(self, tree: Path, fail: bool = False) -> None:
        self.tree, self.fail, self.calls = tree, fail, 0

    def __call__(self, out: Path) -> Layer:
        self.calls += 1
        if self.fail:
            raise LayerError("the package would not unpack")
        return write_layer(self.tree, out, prefix="opt/envctl/env")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "package"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "module.py").write_bytes(b"print('from a package')\n" * 200)
    return root


def test_a_layer_is_made_once_and_equal_layers_are_stored_once(tree: Path, tmp_path: Path) -> None:
    cache, make = LayerCache(tmp_path / "cache"), Maker(tree)
    first = cache.layer("numpy-1.26.4-abc", make)
    again = cache.layer("numpy-1.26.4-abc", make)
    assert make.calls == 1
    assert again == first
    other = cache.layer("same-bytes-other-key", make)  # say the same package in another channel
    assert other.digest == first.digest
    assert list((tmp_path / "cache" / "blobs" / "sha256").iterdir()) == [first.path]
    assert b"".join(cache.read("numpy-1.26.4-abc", first)) == first.path.read_bytes()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_corrupt_layer_is_never_read_twice_and_is_made_again(tree: Path, tmp_path: Path) -> None:
    cache, make = LayerCache(tmp_path / "cache"), Maker(tree)
    layer = cache.layer("pkg", make)
    data = bytearray(layer.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: only the digest can tell
    layer.path.write_bytes(bytes(data))
    with pytest.raises(LayerError, match="corrupt"):
        b"".join(cache.read("pkg", layer))
    assert cache.get("pkg") is None
    remade = cache.layer("pkg", make)
    assert make.calls == 2
    assert remade.digest == layer.digest
    assert b"".join(cache.read("pkg", remade)) == remade.path.read_bytes()


def test_a_truncated_layer_is_dropped_when_looked_up(tree: Path, tmp_path: Path) -> None:
    cache, make = LayerCache(tmp_path / "cache"), Maker(tree)
    layer = cache.layer("pkg", make)
    layer.path.write_bytes(layer.path.read_bytes()[:-10])
    assert cache.get("pkg") is None
    assert cache.layer("pkg", make).size == layer.size
    assert make.calls == 2


def test_a_failed_make_leaves_no_entry_and_a_key_is_never_a_path(
    tree: Path, tmp_path: Path
) -> None:
    cache = LayerCache(tmp_path / "cache")
    with pytest.raises(LayerError):
        cache.layer("pkg", Maker(tree, fail=True))
    assert cache.get("pkg") is None
    for key in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="not a layer cache key"):
            cache.get(key)
