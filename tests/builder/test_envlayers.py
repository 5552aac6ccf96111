"""builder.envlayers without an engine: what a package may be called, what a base image's python
may answer, where a wheel may write, and how layers are ordered and grouped past the budget."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import zipfile
from pathlib import Path
from typing import Literal

import pytest
import rattler
from rattler.exceptions import InvalidVersionError

from builder import envlayers
from builder.envlayers import (
    ENV_PREFIX,
    PackageLayer,
    PythonScheme,
    _check_record,
    _install_wheel,
    conda_key,
    finish,
    remove_tree,
)
from builder.errors import CorruptLayer, StepFailed
from builder.layer import write_layer
from builder.layercache import LayerCache


def _record(name: str = "pkg", version: str = "1.0", noarch: Literal["python"] | None = None,
            channel: str = "http://127.0.0.1:1/",
            site: str | None = None) -> rattler.RepoDataRecord:  # fmt: skip
    package = rattler.PackageRecord(
        name=name, version=version, build=rattler.BuildString("0"), build_number=0,
        subdir="noarch" if noarch else "linux-64", depends=[], md5=bytes(16),
        sha256=bytes.fromhex("ab" * 32), noarch=rattler.NoArchType(noarch),
        python_site_packages_path=site,
    )  # fmt: skip
    file_name = f"{name}-{version}-0.conda"
    return rattler.RepoDataRecord(package, file_name, f"{channel}linux-64/{file_name}", channel)


def test_a_layer_key_names_the_package_its_channel_and_its_python_only_when_it_matters() -> None:
    # the python is named by its record's sha256: 3.13 and a free-threaded 3.13t differ
    plain = conda_key(_record(), python="c0ffee")
    assert plain.startswith("conda-" + "ab" * 32 + "-")
    assert "-py" not in plain  # a compiled package does not depend on the python beside it
    assert conda_key(_record(channel="http://127.0.0.1:2/"), "c0ffee") != plain
    noarch = conda_key(_record(noarch="python"), python="c0ffee")
    assert "-pyc0ffee-" in noarch
    assert conda_key(_record(noarch="python"), python="beef00") != noarch


@pytest.mark.parametrize(
    "site", ["../../../../tmp/escaped", "/tmp/escaped", "lib/python3.11/site-packages/../../x"]
)
def test_a_python_that_would_put_packages_outside_its_site_packages_is_refused(site: str) -> None:
    with pytest.raises(StepFailed, match="python_site_packages_path"):
        _check_record(_record(name="python", version="3.11.9", site=site))
    _check_record(_record(name="python", version="3.13.1", site="lib/python3.13t/site-packages"))


@pytest.mark.parametrize("version", ["1.0/..", "..", "1.0\n"])
def test_a_record_whose_names_could_be_paths_is_refused(version: str) -> None:
    # rattler refuses most such records itself; whatever it lets through, envctl refuses
    with pytest.raises((StepFailed, InvalidVersionError)):
        _check_record(_record(version=version))


def test_a_base_images_python_answer_must_be_plain() -> None:
    paths = {name: f"/usr/lib/python3/{name}" for name in envlayers._SCHEME_KEYS}
    good = {"version": "3.11", "executable": "/usr/bin/python3", "paths": paths}
    scheme = PythonScheme.from_json(json.dumps(good))
    assert scheme.version == "3.11"
    assert PythonScheme.from_json(scheme.as_json()) == scheme
    bad = [
        "not json",
        json.dumps({**good, "version": "3.11; rm -rf /"}),
        json.dumps({**good, "executable": "python3"}),
        json.dumps({**good, "paths": {**paths, "purelib": "/usr/../../etc"}}),
        json.dumps({**good, "paths": {**paths, "scripts": "/usr/bin\n/etc"}}),
        json.dumps({k: v for k, v in good.items() if k != "paths"}),
    ]
    for text in bad:
        with pytest.raises(ValueError, match="not a"):
            PythonScheme.from_json(text)


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel of `files` with its METADATA, WHEEL and a RECORD that lists every file's hash."""
    info = "demo-1.0.dist-info"
    files = {
        **files,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    lines = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/RECORD", "".join(lines) + f"{info}/RECORD,,\n")
    return path


def test_a_wheel_installs_under_its_scheme_and_never_outside(tmp_path: Path) -> None:
    scheme = PythonScheme.conda("3.11")
    good = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/__init__.py": b"X = 1\n"})
    _install_wheel(good, scheme, tmp_path / "root")
    site = tmp_path / "root" / ENV_PREFIX.lstrip("/") / "lib/python3.11/site-packages"
    assert (site / "demo" / "__init__.py").read_bytes() == b"X = 1\n"
    assert (site / "demo-1.0.dist-info" / "RECORD").exists()

    for name in ("../../../escaped.py", "demo-1.0.data/data/../../../../escaped.py"):
        evil = _wheel(tmp_path / "evil" / "demo-1.0-py3-none-any.whl", {name: b"owned\n"})
        with pytest.raises(StepFailed, match="outside"):
            _install_wheel(evil, scheme, tmp_path / "evil-root")
        evil.unlink()
    assert not list(tmp_path.rglob("escaped.py"))


def _package(cache: LayerCache, tmp_path: Path, section: str, name: str, size: int) -> PackageLayer:
    root = tmp_path / "trees" / f"{section}-{name}"
    (root / "share" / name).mkdir(parents=True)
    (root / "share" / name / "data").write_bytes(random.Random(name).randbytes(size))  # noqa: S311  (data, not keys)
    key = f"{section}-{name}"
    layer = cache.layer(key, lambda out: write_layer(root, out, prefix=ENV_PREFIX))
    return PackageLayer(section, name, key, layer)


def test_under_the_budget_every_package_has_its_layer_conda_first(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    packages = [_package(cache, tmp_path, s, n, 10) for s, n in
                [("pip", "b"), ("conda", "z"), ("pip", "a"), ("conda", "c")]]  # fmt: skip
    ordered = finish(packages, budget=100, cache=cache)
    assert [(p.section, p.name) for p in ordered] == [
        ("conda", "c"), ("conda", "z"), ("pip", "a"), ("pip", "b"),
    ]  # fmt: skip


def test_past_the_budget_the_biggest_keep_a_layer_and_one_more_package_moves_one_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envlayers, "BUCKETS", 2)
    cache = LayerCache(tmp_path / "cache")
    names = [f"p{n:02d}" for n in range(12)]
    packages = [_package(cache, tmp_path, "conda", n, 100 + i) for i, n in enumerate(names)]
    ordered = finish(packages, budget=7, cache=cache)
    assert len(ordered) <= 6  # and the top layer makes 7
    own = [p for p in ordered if "bucket" not in p.name]
    assert [p.name for p in own] == ["p10", "p11"]  # the biggest
    members = sorted(m for p in ordered if "bucket" in p.name for m in p.note["members"])
    assert members == names[:10]

    more = [*packages, _package(cache, tmp_path, "conda", "p99", 1)]
    again = finish(more, budget=7, cache=cache)
    changed = {p.key for p in again} - {p.key for p in ordered}
    assert len(changed) == 1  # only the bucket p99 joined


def test_a_tree_of_any_depth_is_removed(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    path = str(deep)
    for _ in range(1100):  # deeper than Python's recursion limit
        os.mkdir(path)
        path += "/d"
    remove_tree(deep)
    assert not deep.exists()
    remove_tree(deep)  # a missing tree is no error


def test_a_damaged_member_of_a_bucket_is_dropped_so_the_next_build_makes_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envlayers, "BUCKETS", 1)
    cache = LayerCache(tmp_path / "cache")
    packages = [_package(cache, tmp_path, "conda", f"p{n}", 1000) for n in range(4)]
    blob = packages[0].layer.path
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: gzip or tar sees it first
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptLayer):
        finish(packages, budget=2, cache=cache)  # all four in one bucket
    made = []
    for package in packages:  # every member is made again, and the bucket with them
        assert cache.entry(package.key) is None
        made.append(_package(cache, tmp_path / "again", "conda", package.name, 1000))
    assert len(finish(made, budget=2, cache=cache)) == 1
