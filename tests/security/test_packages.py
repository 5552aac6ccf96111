"""A channel's package is hostile until proven otherwise: one that links out of its prefix, or
names a host file, writes and reads nothing on the build host, and leaves no image. Attacked
through the real CLI with a real (file:) channel that the test writes, rattler installing it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from rattler.index import index_fs
from typer.testing import CliRunner

from builder.envlayers import ENV_PREFIX
from cli.main import app
from registry.oci import OciRegistry
from tests.conftest import Services

EPOCH = 1_704_067_200


def _package(
    channel: Path,
    name: str,
    entries: list[tuple[str, str, bytes | str]],
    *,
    noarch: str = "generic",
    **fields: object,
) -> None:
    """Write noarch/NAME-1.0-0.tar.bz2 holding `entries`: (path, "file" or "link", data or
    link target), recorded in its paths.json as conda-build would; `fields` go into its
    index.json."""
    paths: list[dict[str, object]] = []
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        for path, kind, value in entries:
            info = tarfile.TarInfo(path)
            info.mtime = EPOCH
            if kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
                tar.addfile(info)
                paths.append({"_path": path, "path_type": "softlink"})
            else:
                data = value if isinstance(value, bytes) else value.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                paths.append({"_path": path, "path_type": "hardlink",
                              "sha256": hashlib.sha256(data).hexdigest(),
                              "size_in_bytes": len(data)})  # fmt: skip
    index = {"name": name, "version": "1.0", "build": "0", "build_number": 0,
             "subdir": "noarch", "noarch": noarch, "depends": [], "license": "MIT",
             "timestamp": EPOCH * 1000, **fields}  # fmt: skip
    info_files = {
        "info/index.json": json.dumps(index).encode(),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}).encode(),
        "info/files": "".join(f"{p}\n" for p, _, _ in entries).encode(),
    }
    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    (channel / "linux-64").mkdir(exist_ok=True)
    with tarfile.open(channel / "noarch" / f"{name}-{index['version']}-0.tar.bz2", "w:bz2") as out:
        for path, data in info_files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), EPOCH
            out.addfile(info, io.BytesIO(data))
        payload.seek(0)
        with tarfile.open(fileobj=payload) as inner:
            for member in inner.getmembers():
                out.addfile(member, inner.extractfile(member) if member.isfile() else None)


def _spec(tmp_path: Path, channel: Path, package: str) -> Path:
    spec = tmp_path / f"spec-{uuid.uuid4().hex[:8]}.yml"
    spec.write_text(
        f"base_image: {os.environ['ENVCTL_TEST_BASE_IMAGE']}\n"
        f"conda: {{channels: ['{channel.as_uri()}'], dependencies: [{package}]}}\n"
    )
    return spec


@pytest.fixture
def channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: OciRegistry) -> Path:
    """An empty channel of the test's own, the only one the builds read."""
    folder = tmp_path / "channel"
    (folder / "noarch").mkdir(parents=True)
    monkeypatch.delenv("ENVCTL_CHANNELS")  # the spec's own channel
    return folder


def _index(channel: Path) -> None:
    asyncio.run(index_fs(channel))


def test_a_package_that_writes_through_its_own_link_writes_nothing_on_the_host(
    cli: CliRunner, channel: Path, workspace: OciRegistry, tmp_path: Path
) -> None:
    host = tmp_path / "host-folder"
    host.mkdir()
    _package(channel, "evil-escape", [("lib", "link", str(host)), ("lib/evil.txt", "file", "x")])
    _index(channel)
    result = cli.invoke(app, ["resolve", "--json", str(_spec(tmp_path, channel, "evil-escape"))])
    assert result.exit_code == 1, result.stderr  # the package's failure, remembered as such
    assert "outside of destination path" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(host.iterdir()) == []
    assert workspace.tags() == []  # no image, and no metadata of one


def test_a_python_that_sends_its_packages_out_of_the_prefix_writes_nothing_on_the_host(
    cli: CliRunner, channel: Path, workspace: OciRegistry, tmp_path: Path
) -> None:
    """rattler puts a noarch: python package's files under its python's site-packages path,
    which the channel's python record states: here, a way out of the install folder."""
    host = tmp_path / "host-folder"
    host.mkdir()
    escape = "../" * 40 + str(host).lstrip("/")
    _package(channel, "python", [("bin/python3.11", "file", "#!/bin/sh\n")],
             python_site_packages_path=escape, version="3.11.9")  # fmt: skip
    _package(channel, "evil-site", [("site-packages/evil.py", "file", "owned = True\n")],
             noarch="python", depends=["python"])  # fmt: skip
    _index(channel)
    spec = _spec(tmp_path, channel, "evil-site")
    result = cli.invoke(app, ["resolve", "--json", str(spec)])
    assert result.exit_code == 1, result.stderr
    assert "python_site_packages_path" in result.stderr
    assert list(host.iterdir()) == []
    assert workspace.tags() == []


def test_a_package_that_links_to_a_host_file_sends_the_link_not_the_file(
    cli: CliRunner, channel: Path, workspace: OciRegistry, services: Services, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's secret\n")
    _package(channel, "evil-read", [("share/secret", "link", str(secret)),
                                    ("share/readme", "file", "hi")])  # fmt: skip
    _index(channel)
    result = cli.invoke(app, ["resolve", "--json", str(_spec(tmp_path, channel, "evil-read"))])
    assert result.exit_code == 0, result.stderr  # a link is a link: the image may hold it
    blobs = sorted((tmp_path / "home" / "layers" / "blobs" / "sha256").iterdir())
    assert blobs
    seen = False
    for blob in blobs:
        with tarfile.open(blob) as tar:
            for member in tar.getmembers():
                if member.name == f"{ENV_PREFIX.lstrip('/')}/share/secret":
                    assert member.issym()
                    assert member.linkname == str(secret)
                    seen = True
                if member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    assert b"the host's secret" not in data.read()
    assert seen, "the package's link is in its layer"
