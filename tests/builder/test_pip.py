"""builder.pip without an index: which wheel a lock pins, what uv is told, what a fetch accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from builder.envlayers import LockedWheel
from builder.errors import SolveError, StepFailed
from builder.pip import _best, _uv_options, fetch, supported_tags

SHA = "cd" * 32


def _entry(filename: str) -> dict[str, object]:
    return {"url": f"https://index.invalid/f/{filename}", "hashes": {"sha256": SHA}}


def test_the_pinned_wheel_is_the_one_the_image_runs_best() -> None:
    tags = {tag: rank for rank, tag in enumerate(supported_tags("3.11", "linux/amd64"))}
    package = {
        "name": "NumPy",
        "version": "1.26.4",
        "wheels": [
            _entry("numpy-1.26.4-cp311-cp311-macosx_11_0_arm64.whl"),
            _entry("numpy-1.26.4-cp311-cp311-manylinux_2_31_x86_64.whl"),  # glibc too new
            _entry("numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl"),
            _entry("numpy-1.26.4-py3-none-any.whl"),
            _entry("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        ],
    }
    wheel = _best(package, tags)
    assert wheel.name == "numpy"
    assert (
        wheel.filename == "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    )
    assert wheel.sha256 == SHA

    only_mac = {**package, "wheels": [_entry("numpy-1.26.4-cp311-cp311-macosx_11_0_arm64.whl")]}
    with pytest.raises(SolveError, match="no wheel of numpy runs on the image"):
        _best(only_mac, tags)


def test_pips_options_reach_uv_as_uv_names_them() -> None:
    options = ["--index-url=http://127.0.0.1:9/simple", "--find-links=/srv/wheels", "--no-index",
               "--pre", "--prefer-binary", "--trusted-host=127.0.0.1:9"]  # fmt: skip
    assert _uv_options(options) == [
        "--index-url", "http://127.0.0.1:9/simple", "--find-links", "/srv/wheels", "--no-index",
        "--prerelease", "allow", "--allow-insecure-host", "127.0.0.1:9",
    ]  # fmt: skip


def _local(tmp_path: Path, data: bytes, folder: str = "links") -> tuple[Path, LockedWheel]:
    path = tmp_path / folder / "demo-1.0-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = hashlib.sha256(b"the pinned bytes").hexdigest()
    return path, LockedWheel("demo", "1.0", path.name, path.as_uri(), sha)


def test_a_wheel_is_fetched_only_from_the_operators_folders_and_only_as_pinned(
    tmp_path: Path,
) -> None:
    sources = [f"--find-links={tmp_path / 'links'}"]
    (tmp_path / "out").mkdir()
    _, wheel = _local(tmp_path, b"the pinned bytes")
    assert fetch(wheel, tmp_path / "out", sources=sources).read_bytes() == b"the pinned bytes"

    _, elsewhere = _local(tmp_path, b"the pinned bytes", folder="elsewhere")
    with pytest.raises(StepFailed, match="not under the operator's find-links"):
        fetch(elsewhere, tmp_path / "out", sources=sources)

    _, changed = _local(tmp_path, b"other bytes")
    with pytest.raises(StepFailed, match="not the pinned wheel"):
        fetch(changed, tmp_path / "out", sources=sources)
    assert not (tmp_path / "out" / changed.filename).exists()

    named = LockedWheel("demo", "1.0", "../escape.whl", wheel.url, wheel.sha256)
    with pytest.raises(StepFailed, match="not a wheel file name"):
        fetch(named, tmp_path / "out", sources=sources)


def test_a_requirements_hash_decides_which_wheel_may_be_pinned() -> None:
    tags = {tag: rank for rank, tag in enumerate(supported_tags("3.11", "linux/amd64"))}
    best = {"url": "https://index.invalid/f/demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
            "hashes": {"sha256": "aa" * 32}}  # fmt: skip
    pure = {"url": "https://index.invalid/f/demo-1.0-py3-none-any.whl",
            "hashes": {"sha256": "bb" * 32}}  # fmt: skip
    package = {"name": "demo", "version": "1.0", "wheels": [best, pure]}
    assert _best(package, tags).sha256 == "aa" * 32
    assert _best(package, tags, {"demo": {"bb" * 32}}).sha256 == "bb" * 32
    with pytest.raises(SolveError, match="--hash allows"):
        _best(package, tags, {"demo": {"cc" * 32}})
