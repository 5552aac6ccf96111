"""The local conda channel (fixtures/channel, built by scripts/build-channel, served by
`scripts/services`): it answers over HTTP like a real channel, its packages are real conda
packages, py-rattler solves them as designed, and installing them replaces the prefix
placeholder in text and binary files.

Everything here talks to the served channel, never to the files behind it: the builder reaches
it the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from rattler import Channel, Gateway, RepoDataRecord, install, solve
from rattler.exceptions import SolverError

from tests.conftest import FIXTURES, ROOT, Services

SOURCES = FIXTURES / "channel"
BUILD_CHANNEL = ROOT / "scripts" / "build-channel"
PLATFORMS: list[Literal["linux-64", "noarch"]] = ["linux-64", "noarch"]
EXPECTED = {
    "linux-64": {
        "envctl-data-1.0-h0.tar.bz2",
        "envctl-hello-1.0-h0.tar.bz2",
        "envctl-hello-2.0-h0.tar.bz2",
    },
    "noarch": {
        "envctl-conflict-a-1.0-0.tar.bz2",
        "envctl-conflict-b-1.0-0.tar.bz2",
        "envctl-greet-1.0-0.tar.bz2",
    },
}


def fetch(url: str) -> bytes:
    """GET a channel file; fail (never skip) with the URL when the channel does not answer."""
    try:
        response = httpx.get(url, timeout=10, trust_env=False)
    except httpx.HTTPError as exc:
        pytest.fail(
            f"the conda channel does not answer at {url} ({exc}): run `scripts/services up`"
        )
    assert response.status_code == 200, f"GET {url}: {response.status_code}"
    return response.content


def repodata(services: Services, subdir: str) -> dict[str, Any]:
    """The served repodata.json of one subdir."""
    data: dict[str, Any] = json.loads(fetch(f"{services.channels}{subdir}/repodata.json"))
    return data


def unpack(archive: bytes) -> dict[str, bytes]:
    """A .tar.bz2 conda package as {path: content}."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:bz2") as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            if extracted is not None:
                files[member.name] = extracted.read()
    return files


def run_solve(services: Services, cache: Path, specs: list[str]) -> list[RepoDataRecord]:
    """Solve SPECS against the served channel only, with a fresh repodata cache."""
    return asyncio.run(
        solve(
            sources=[Channel(services.channels)],
            specs=specs,
            gateway=Gateway(cache_dir=cache),
            platforms=PLATFORMS,
            virtual_packages=[],
        )
    )


def versions(records: list[RepoDataRecord]) -> dict[str, str]:
    """{name: version} of a solution."""
    return {record.name.normalized: str(record.version) for record in records}


# ---------------------------------------------------------------------------------- served


@pytest.mark.parametrize("subdir", PLATFORMS)
def test_each_subdir_serves_its_repodata(services: Services, subdir: str) -> None:
    data = repodata(services, subdir)
    assert data["info"]["subdir"] == subdir
    assert set(data["packages"]) == EXPECTED[subdir]
    assert all(record["subdir"] == subdir for record in data["packages"].values())


@pytest.mark.parametrize("subdir", PLATFORMS)
def test_served_packages_are_real_conda_packages(services: Services, subdir: str) -> None:
    for filename, record in repodata(services, subdir)["packages"].items():
        archive = fetch(f"{services.channels}{subdir}/{filename}")
        assert hashlib.sha256(archive).hexdigest() == record["sha256"], filename
        files = unpack(archive)
        index = json.loads(files["info/index.json"])
        assert (index["name"], index["version"], index["build"]) == (
            record["name"],
            record["version"],
            record["build"],
        )
        assert index["timestamp"] == record["timestamp"]
        paths = json.loads(files["info/paths.json"])
        assert paths["paths_version"] == 1
        payload = {p: data for p, data in files.items() if not p.startswith("info/")}
        # paths.json, info/files and the archive agree on every payload file, byte for byte.
        assert {entry["_path"] for entry in paths["paths"]} == set(payload), filename
        assert files["info/files"].decode().splitlines() == sorted(payload), filename
        for entry in paths["paths"]:
            data = payload[entry["_path"]]
            assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["_path"]
            assert entry["size_in_bytes"] == len(data), entry["_path"]


def test_served_channel_is_what_the_sources_build(services: Services, tmp_path: Path) -> None:
    # Deterministic builds make this a byte comparison: a channel left stale after the sources
    # changed fails here, not in a confusing solve later.
    out = tmp_path / "channel"
    subprocess.run([sys.executable, BUILD_CHANNEL, SOURCES, out], check=True, capture_output=True)
    for subdir in PLATFORMS:
        served = fetch(f"{services.channels}{subdir}/repodata.json")
        assert served == (out / subdir / "repodata.json").read_bytes(), (
            f"{subdir}/repodata.json differs from a fresh build of {SOURCES}: "
            "run `scripts/services up` to rebuild the channel"
        )


def test_build_channel_rejects_a_bad_recipe(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    shutil.copytree(SOURCES / "envctl-data-1.0", sources / "envctl-data-1.0")
    meta_path = sources / "envctl-data-1.0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["subdir"] = "noarch"  # without "noarch": "generic", the solver would misread it
    meta_path.write_text(json.dumps(meta))

    result = subprocess.run(
        [sys.executable, BUILD_CHANNEL, sources, tmp_path / "out"], capture_output=True, text=True
    )

    assert result.returncode == 1
    assert "noarch" in result.stderr
    assert str(meta_path) in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- solve


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["envctl-hello"], {"envctl-hello": "2.0"}),
        (["envctl-hello 1.*"], {"envctl-hello": "1.0"}),
        (["envctl-greet"], {"envctl-greet": "1.0", "envctl-hello": "2.0"}),
        (["envctl-greet", "envctl-hello <2"], {"envctl-greet": "1.0", "envctl-hello": "1.0"}),
        (["envctl-conflict-a"], {"envctl-conflict-a": "1.0", "envctl-hello": "1.0"}),
        (["envctl-data"], {"envctl-data": "1.0"}),
    ],
)
def test_solve(
    services: Services, tmp_path: Path, specs: list[str], expected: dict[str, str]
) -> None:
    records = run_solve(services, tmp_path / "cache", specs)

    assert versions(records) == expected
    assert all(record.url.startswith(services.channels) for record in records)


def test_conflicting_packages_are_unsolvable(services: Services, tmp_path: Path) -> None:
    with pytest.raises(SolverError) as raised:
        run_solve(services, tmp_path / "cache", ["envctl-conflict-a", "envctl-conflict-b"])

    message = str(raised.value)
    for name in ("envctl-conflict-a", "envctl-conflict-b", "envctl-hello 1.*", "envctl-hello 2.*"):
        assert name in message


# ---------------------------------------------------------------------------------- install


def test_install_replaces_the_prefix_placeholder(services: Services, tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    records = run_solve(services, tmp_path / "cache", ["envctl-greet"])
    asyncio.run(
        install(records, target_prefix=prefix, cache_dir=tmp_path / "pkgs", show_progress=False)
    )

    hello = subprocess.run(
        [prefix / "bin" / "envctl-hello"], capture_output=True, text=True, check=True
    )
    assert hello.stdout.splitlines() == ["hello from envctl-hello 2.0", str(prefix)]
    greet = subprocess.run(
        [prefix / "bin" / "envctl-greet"], capture_output=True, text=True, check=True
    )
    assert greet.stdout.splitlines() == [
        "greetings from envctl-greet 1.0",
        "hello from envctl-hello 2.0",
        str(prefix),
    ]
    assert (prefix / "conda-meta" / "envctl-hello-2.0-h0.json").is_file()


def test_install_pads_a_binary_placeholder_with_nuls(services: Services, tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    records = run_solve(services, tmp_path / "cache", ["envctl-hello"])
    asyncio.run(
        install(records, target_prefix=prefix, cache_dir=tmp_path / "pkgs", show_progress=False)
    )
    package = unpack(fetch(records[0].url))
    (entry,) = [
        e for e in json.loads(package["info/paths.json"])["paths"] if e["_path"].endswith(".bin")
    ]
    placeholder: str = entry["prefix_placeholder"]
    assert entry["file_mode"] == "binary"
    shipped = package[entry["_path"]]

    installed = (prefix / entry["_path"]).read_bytes()

    # The C string holding the placeholder now holds the real prefix, padded with NULs to the
    # same length, so every offset after it (here, the tail) is where the program expects it.
    suffix = b"/lib/envctl-hello\0"
    padding = b"\0" * (len(placeholder) - len(str(prefix)))
    expected = shipped.replace(
        placeholder.encode() + suffix, str(prefix).encode() + suffix + padding
    )
    assert expected != shipped
    assert installed == expected
    assert len(installed) == len(shipped)
    assert installed.endswith(b"\xff\xfetail 2.0\0")
    assert (prefix / "share/envctl-hello/prefix.txt").read_text() == f"{prefix}\n"
