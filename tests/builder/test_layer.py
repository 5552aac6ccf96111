"""Deterministic layers: the same tree is the same blob whatever its times, owners and listing
order, a valid gzipped tar under its prefix, and an image a real engine pulls and runs."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.assemble import ImageSettings, assemble
from builder.errors import LayerError
from builder.layer import MAX_DEPTH, SOURCE_DATE_EPOCH, merge_layers, write_layer
from hashing import parse_image
from registry.oci import OciRegistry
from tests.conftest import Services, docker

PREFIX = "opt/envctl/env"
NAMES = [
    "bin/hello",
    "lib/python3.11/site-packages/pkg/__init__.py",
    "lib/libz.so.1.3",
    "share/doc/\u00e9t\u00e9.txt",
    "share/" + "long-name-" * 12 + ".txt",
]


def _tree(root: Path, order: list[str]) -> Path:
    """A package-like tree, its files made in `order` (a filesystem lists them as it likes)."""
    files = {
        "bin/hello": (b"#!/bin/sh\necho hello from the layer\n", 0o755),
        "lib/python3.11/site-packages/pkg/__init__.py": (b"VERSION = '1'\n", 0o644),
        "lib/libz.so.1.3": (bytes(range(256)) * 16, 0o755),
        "share/doc/\u00e9t\u00e9.txt": (b"non-ASCII name\n", 0o644),
        "share/" + "long-name-" * 12 + ".txt": (b"a name over 100 bytes\n", 0o600),
    }
    for name in order:
        data, mode = files[name]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (root / "lib" / "libz.so.1").symlink_to("libz.so.1.3")
    (root / "empty").mkdir()
    return root


def test_the_same_tree_is_the_same_blob_whatever_its_times_owners_and_order(
    tmp_path: Path,
) -> None:
    first = _tree(tmp_path / "a", NAMES)
    second = _tree(tmp_path / "b", list(reversed(NAMES)))
    for n, path in enumerate(sorted(second.rglob("*"))):
        os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n), follow_symlinks=False)
        if os.geteuid() == 0:
            os.lchown(path, 1000 + n, 1000 + n)
    one = write_layer(first, tmp_path / "one.tar.gz", prefix=PREFIX)
    two = write_layer(second, tmp_path / "two.tar.gz", prefix=f"/{PREFIX}/")
    assert (one.digest, one.diff_id, one.size) == (two.digest, two.diff_id, two.size)
    assert one.path.read_bytes() == two.path.read_bytes()

    (first / "bin" / "hello").chmod(0o644)  # whether a file runs is part of the tree
    assert write_layer(first, tmp_path / "three.tar.gz", prefix=PREFIX).digest != one.digest


def test_a_layer_is_the_tree_under_its_prefix_sorted_owned_by_root_at_one_time(
    tmp_path: Path,
) -> None:
    root = _tree(tmp_path / "tree", NAMES)
    layer = write_layer(root, tmp_path / "layer.tar.gz", prefix=PREFIX)
    blob = layer.path.read_bytes()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    assert blob[4:8] == b"\0\0\0\0", "no time in the gzip header"
    plain = gzip.decompress(blob)
    assert layer.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()

    with tarfile.open(layer.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:3] == ["opt", "opt/envctl", PREFIX]
    assert names == sorted(names, key=lambda n: n.encode().split(b"/"))
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == SOURCE_DATE_EPOCH
    by_name = {m.name: m for m in members}
    assert by_name[f"{PREFIX}/bin/hello"].mode == 0o755
    assert by_name[f"{PREFIX}/lib/libz.so.1"].issym()
    assert by_name[f"{PREFIX}/lib/libz.so.1"].linkname == "libz.so.1.3"
    assert by_name[f"{PREFIX}/empty"].isdir()
    assert f"{PREFIX}/share/doc/\u00e9t\u00e9.txt" in by_name


def test_a_tree_a_layer_cannot_hold_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    os.mkfifo(root / "bin" / "pipe")
    out = tmp_path / "layer.tar.gz"
    with pytest.raises(LayerError, match="pipe: not a file, folder or symlink"):
        write_layer(root, out, prefix=PREFIX)
    assert list(tmp_path.iterdir()) == [root]


def test_an_engine_runs_the_layers_files_with_their_modes_and_links(
    services: Services, tmp_path: Path
) -> None:
    image = parse_image(services.busybox_image)
    base = OciRegistry(image.domain, repository=image.repository, insecure=[image.domain])
    layer = write_layer(_tree(tmp_path / "tree", NAMES), tmp_path / "layer.tar.gz", prefix=PREFIX)
    host = services.workspace_registry.split("/")[0]
    target = OciRegistry(f"{services.workspace_registry}/layer-{uuid.uuid4().hex[:8]}",
                         insecure=[host])  # fmt: skip
    try:
        described = base.resolve(image.tag or "latest")
        assert described is not None
        settings = ImageSettings(cmd=[f"/{PREFIX}/bin/hello"])
        written = assemble(base, described.digest, target, "layered", [layer],
                           lambda layer: iter([layer.path.read_bytes()]), settings,
                           "linux/amd64")  # fmt: skip
        pinned = target.reference(written.digest)
    finally:
        base.close()
        target.close()
    docker(services, "pull", pinned)
    assert docker(services, "run", "--rm", "--network", "none", pinned).strip() == (
        "hello from the layer"
    )
    listed = docker(
        services, "run", "--rm", "--network", "none", pinned,
        "sh", "-c", f"readlink /{PREFIX}/lib/libz.so.1 && stat -c '%a %u' /{PREFIX}/bin/hello",
    )  # fmt: skip
    assert listed.split() == ["libz.so.1.3", "755", "0"]


def test_modes_are_whether_a_file_runs_and_nothing_else_of_the_host(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for name, mode in {"private": 0o600, "tool": 0o700, "setuid": 0o4755, "shared": 0o666}.items():
        (root / name).write_text(name)
        (root / name).chmod(mode)
    (root / "conda-meta").mkdir()
    (root / "conda-meta" / "left-out.json").write_text("{}")
    layer = write_layer(root, tmp_path / "layer.tar.gz", leave_out=("conda-meta",))
    with tarfile.open(layer.path) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes == {"private": 0o644, "setuid": 0o755, "shared": 0o644, "tool": 0o755}


def test_a_tree_deeper_than_any_package_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "deep")
    for _ in range(MAX_DEPTH + 2):
        os.mkdir(path)
        path += "/d"
    with pytest.raises(LayerError, match="deep"):
        write_layer(tmp_path / "deep", tmp_path / "deep.tar.gz")
    assert not list(tmp_path.glob("deep.tar.gz*"))


def test_merged_layers_hold_every_file_in_order_and_each_folder_once(tmp_path: Path) -> None:
    layers = []
    for name, text in (("one", "first"), ("two", "second")):
        root = tmp_path / name
        (root / "share" / name).mkdir(parents=True)
        (root / "share" / name / "file").write_text(text)
        (root / "share" / "clash").write_text(text)
        layers.append(write_layer(root, tmp_path / f"{name}.tar.gz", prefix=PREFIX))

    def chunks(path: Path) -> Iterator[bytes]:
        with open(path, "rb") as handle:
            while chunk := handle.read(7):  # small chunks: the reader must join them
                yield chunk

    merged = merge_layers([chunks(layer.path) for layer in layers], tmp_path / "merged.tar.gz")
    with tarfile.open(merged.path) as tar:
        members = tar.getmembers()
        clashes = [tar.extractfile(m).read() for m in members if m.name.endswith("clash")]  # type: ignore[union-attr]
    folders = [m.name for m in members if m.isdir()]
    assert len(folders) == len(set(folders))
    files = {m.name for m in members if m.isfile()}
    assert {f"{PREFIX}/share/one/file", f"{PREFIX}/share/two/file"} <= files
    assert clashes == [b"first", b"second"]  # the later wins once unpacked, as stacked layers
    again = merge_layers([chunks(layer.path) for layer in layers], tmp_path / "again.tar.gz")
    assert again.digest == merged.digest


def test_a_whiteout_name_is_refused_as_it_would_delete_files_below(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / ".wh.libc.so.6").write_text("")
    with pytest.raises(LayerError, match=r"\.wh\."):
        write_layer(root, tmp_path / "layer.tar.gz", prefix=PREFIX)
    assert not list(tmp_path.glob("layer.tar.gz*"))
