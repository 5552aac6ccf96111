"""builder.conda against the real local channel (scripts/services), over HTTP.

The channel (fixtures/channel): envctl-hello 1.0/2.0 (linux-64; bin/envctl-hello prints its
version and the prefix read from a text file with a prefix placeholder; lib/envctl-hello/prefix.bin
holds the placeholder in binary), envctl-greet (noarch, depends on envctl-hello),
envctl-conflict-a/-b (each needs a different envctl-hello: unsolvable together).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.conda import (
    CondaLock,
    conda_subdir,
    install,
    solve,
)
from builder.errors import ChannelUnavailable, SolveError, StepFailed
from hashing.conda import CondaEnvironment
from hashing.errors import SpecError
from tests.conftest import Services, docker

HELLO_BIN = "lib/envctl-hello/prefix.bin"
DEAD_CHANNEL = "http://127.0.0.1:9/"  # loopback discard port: nothing listens, connect refused


@pytest.fixture(scope="session")
def channels(services: Services) -> list[str]:
    """ENVCTL_CHANNELS of the running services (the local channel); fails when it is not set."""
    value = os.environ.get("ENVCTL_CHANNELS", "")
    urls = [c.strip() for c in value.split(",") if c.strip()]
    if not urls:
        pytest.fail(
            "ENVCTL_CHANNELS is not set: start the services with `scripts/services up` and "
            '`eval "$(scripts/services env)"` (make test does both)'
        )
    return urls


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A package cache of this test's own (so a test sees its own downloads)."""
    return tmp_path / "cache"


def env(*deps: str, channels: tuple[str, ...] = ()) -> CondaEnvironment:
    return CondaEnvironment(channels=channels, dependencies=tuple(sorted(deps)))


def versions(lock: CondaLock) -> dict[str, str]:
    return {p.name: p.version for p in lock.packages}


@pytest.fixture
def timed() -> Iterator[dict[str, float]]:
    """Collect durations; printed at the end of the test (`pytest -s` or -rP shows them)."""
    times: dict[str, float] = {}
    yield times
    for what, seconds in times.items():
        print(f"{what}: {seconds * 1000:.1f} ms")


# ---------------------------------------------------------------------------- platforms


@pytest.mark.parametrize(
    ("platform", "subdir"),
    [
        ("linux/amd64", "linux-64"),
        ("linux/x86_64", "linux-64"),
        ("linux/arm64", "linux-aarch64"),
        ("linux/arm64/v8", "linux-aarch64"),
        ("linux/ppc64le", "linux-ppc64le"),
        ("linux/s390x", "linux-s390x"),
        ("linux/arm/v7", "linux-armv7l"),
    ],
)
def test_conda_subdir(platform: str, subdir: str) -> None:
    assert conda_subdir(platform) == subdir


@pytest.mark.parametrize("platform", ["windows/amd64", "linux/mips64", "amd64", ""])
def test_conda_subdir_unknown(platform: str) -> None:
    with pytest.raises(SpecError) as info:
        conda_subdir(platform)
    assert info.value.field == "platform"


# ---------------------------------------------------------------------------- solve


def test_solve_picks_the_highest_version(
    channels: list[str], cache: Path, timed: dict[str, float]
) -> None:
    start = time.perf_counter()
    lock = solve(env("envctl-hello"), platform="linux/amd64", channels=channels, cache_dir=cache)
    timed["solve (cold repodata cache)"] = time.perf_counter() - start
    start = time.perf_counter()
    solve(env("envctl-hello"), platform="linux/amd64", channels=channels, cache_dir=cache)
    timed["solve (warm repodata cache)"] = time.perf_counter() - start
    assert versions(lock) == {"envctl-hello": "2.0"}
    (hello,) = lock.packages
    assert hello.subdir == "linux-64"
    assert hello.url == f"{channels[0].rstrip('/')}/linux-64/envctl-hello-2.0-{hello.build}.tar.bz2"
    assert len(hello.sha256) == 64
    assert lock.platform == "linux-64"


def test_solve_honours_constraints(channels: list[str], cache: Path) -> None:
    lock = solve(
        env("envctl-hello 1.*"), platform="linux/amd64", channels=channels, cache_dir=cache
    )
    assert versions(lock) == {"envctl-hello": "1.0"}


def test_solve_pulls_dependencies(channels: list[str], cache: Path) -> None:
    lock = solve(env("envctl-greet"), platform="linux/amd64", channels=channels, cache_dir=cache)
    assert versions(lock) == {"envctl-greet": "1.0", "envctl-hello": "2.0"}
    assert [p.name for p in lock.packages] == ["envctl-greet", "envctl-hello"]  # sorted
    assert {p.name: p.subdir for p in lock.packages} == {
        "envctl-greet": "noarch",
        "envctl-hello": "linux-64",
    }


def test_unsolvable_pair_names_the_packages(
    channels: list[str], cache: Path, timed: dict[str, float]
) -> None:
    start = time.perf_counter()
    with pytest.raises(SolveError) as info:
        solve(
            env("envctl-conflict-a", "envctl-conflict-b"),
            platform="linux/amd64",
            channels=channels,
            cache_dir=cache,
        )
    timed["unsolvable solve"] = time.perf_counter() - start
    message = str(info.value)
    assert info.value.deterministic
    for part in ("envctl-conflict-a", "envctl-conflict-b", "envctl-hello 1.*", "envctl-hello 2.*"):
        assert part in message


def test_missing_package_is_a_solve_error(channels: list[str], cache: Path) -> None:
    with pytest.raises(SolveError, match="envctl-no-such-package"):
        solve(
            env("envctl-no-such-package"),
            platform="linux/amd64",
            channels=channels,
            cache_dir=cache,
        )


def test_configured_channels_win_over_the_environments(channels: list[str], cache: Path) -> None:
    own = env("envctl-hello", channels=(DEAD_CHANNEL,))
    lock = solve(own, platform="linux/amd64", channels=channels, cache_dir=cache)
    assert versions(lock) == {"envctl-hello": "2.0"}
    # without configured channels, the environment's own are used
    lock = solve(
        env("envctl-hello", channels=tuple(channels)),
        platform="linux/amd64",
        channels=None,
        cache_dir=cache,
    )
    assert versions(lock) == {"envctl-hello": "2.0"}
    assert lock.text.count("url: " + channels[0].rstrip("/")) >= 1


def test_no_channels_at_all(cache: Path) -> None:
    with pytest.raises(SolveError, match="no conda channels"):
        solve(env("envctl-hello"), platform="linux/amd64", channels=None, cache_dir=cache)


def test_unreachable_channel_is_transient(cache: Path) -> None:
    with pytest.raises(ChannelUnavailable) as info:
        solve(env("envctl-hello"), platform="linux/amd64", channels=[DEAD_CHANNEL], cache_dir=cache)
    assert not info.value.deterministic
    assert "127.0.0.1:9" in str(info.value)


def test_a_missing_channel_is_deterministic(channels: list[str], cache: Path) -> None:
    missing = channels[0].rstrip("/") + "/no-such-channel"
    with pytest.raises(SolveError, match="does not exist"):
        solve(
            env("envctl-hello", channels=(missing,)),
            platform="linux/amd64",
            channels=None,
            cache_dir=cache,
        )
    # channels are part of the key wherever they come from: the key's own failure either way
    with pytest.raises(SolveError, match="does not exist"):
        solve(env("envctl-hello"), platform="linux/amd64", channels=[missing], cache_dir=cache)


def test_solve_works_under_a_running_event_loop(channels: list[str], cache: Path) -> None:
    async def caller() -> CondaLock:
        return solve(
            env("envctl-hello 1.*"), platform="linux/amd64", channels=channels, cache_dir=cache
        )

    assert versions(asyncio.run(caller())) == {"envctl-hello": "1.0"}


# ---------------------------------------------------------------------------- lock file


def test_lock_text_is_conda_lock_format(channels: list[str], cache: Path, tmp_path: Path) -> None:
    from conda_lock.lockfile import parse_conda_lock_file  # type: ignore[import-untyped, unused-ignore]

    lock = solve(env("envctl-greet"), platform="linux/amd64", channels=channels, cache_dir=cache)
    path = tmp_path / "conda-lock.yml"
    path.write_text(lock.text)
    parsed = parse_conda_lock_file(path)
    assert parsed.metadata.platforms == ["linux-64"]
    assert [c.url for c in parsed.metadata.channels] == [c.rstrip("/") for c in channels]
    by_name = {p.name: p for p in parsed.package}
    assert set(by_name) == {"envctl-greet", "envctl-hello"}
    for package in lock.packages:
        locked = by_name[package.name]
        assert locked.manager == "conda"
        assert locked.version == package.version
        assert locked.url == package.url
        assert locked.hash.sha256 == package.sha256
        assert len(locked.hash.md5) == 32
    assert by_name["envctl-greet"].dependencies == {"envctl-hello": ">=1"}


def test_lock_reads_back_from_its_text(channels: list[str], cache: Path) -> None:
    lock = solve(env("envctl-greet"), platform="linux/amd64", channels=channels, cache_dir=cache)
    again = CondaLock.from_text(lock.text)
    assert again == lock
    assert sorted(r.url for r in again.records) == sorted(r.url for r in lock.records)
    # the same solve gives the same lock, byte for byte
    assert (
        solve(env("envctl-greet"), platform="linux/amd64", channels=channels, cache_dir=cache)
        == lock
    )


def test_from_text_rejects_what_is_not_a_lock() -> None:
    with pytest.raises(ValueError, match="not a conda-lock file"):
        CondaLock.from_text("this: is not a lock\n")


# ---------------------------------------------------------------------------- install


def package_file(url: str, path: str) -> tuple[bytes, str]:
    """A payload file of a package, as the channel serves it, and the package's placeholder."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our channel
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as tar:
        payload = tar.extractfile(path)
        paths = tar.extractfile("info/paths.json")
        assert payload is not None
        assert paths is not None
        entries = {e["_path"]: e for e in json.load(paths)["paths"]}
        return payload.read(), entries[path]["prefix_placeholder"]


def test_install_writes_the_final_prefix_into_text_and_binary_files(
    channels: list[str], cache: Path, tmp_path: Path, timed: dict[str, float]
) -> None:
    lock = solve(env("envctl-hello"), platform="linux/amd64", channels=channels, cache_dir=cache)
    target = tmp_path / "context" / "env"
    prefix = "/opt/envctl/envs/0123456789abcdef0123456789abcdef"
    start = time.perf_counter()
    install(lock, prefix=prefix, target=target, cache_dir=cache)
    timed["install (cold package cache)"] = time.perf_counter() - start

    text = (target / "share/envctl-hello/prefix.txt").read_text()
    assert text.strip() == prefix
    assert str(target) not in text
    original, placeholder = package_file(lock.packages[0].url, HELLO_BIN)
    assert placeholder.encode() in original
    binary = (target / HELLO_BIN).read_bytes()
    assert len(binary) == len(original)
    assert placeholder.encode() not in binary
    assert str(target).encode() not in binary
    # conda's binary rule: the C string holding the placeholder gets the prefix, NUL-padded
    old = placeholder.encode() + b"/lib/envctl-hello"
    new = (prefix.encode() + b"/lib/envctl-hello").ljust(len(old), b"\0")
    assert binary == original.replace(old, new)
    # nothing about this host in the environment
    assert not (target / "CACHEDIR.TAG").exists()
    for meta in (target / "conda-meta").glob("*.json"):
        assert str(tmp_path) not in meta.read_text()  # neither the cache nor the target


def test_installed_environment_runs_at_its_prefix(
    services: Services, channels: list[str], cache: Path, tmp_path: Path
) -> None:
    lock = solve(env("envctl-greet"), platform="linux/amd64", channels=channels, cache_dir=cache)
    target = tmp_path / "env"
    prefix = "/opt/envctl/envs/run-test"
    install(lock, prefix=prefix, target=target, cache_dir=cache)
    out = docker(
        services,
        *("run", "--rm", "--network", "none", "-v", f"{target}:{prefix}:ro"),
        *(services.base_image, f"{prefix}/bin/envctl-greet"),
    )
    assert out.splitlines() == [
        "greetings from envctl-greet 1.0",
        "hello from envctl-hello 2.0",
        prefix,
    ]


def test_installed_environment_runs_after_a_move(
    channels: list[str], cache: Path, tmp_path: Path
) -> None:
    import subprocess

    lock = solve(
        env("envctl-hello 1.*"), platform="linux/amd64", channels=channels, cache_dir=cache
    )
    target = tmp_path / "built"
    prefix = tmp_path / "moved" / "env"
    install(lock, prefix=str(prefix), target=target, cache_dir=cache)
    prefix.parent.mkdir()
    shutil.move(target, prefix)
    out = subprocess.run([prefix / "bin/envctl-hello"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["hello from envctl-hello 1.0", str(prefix)]


def test_the_package_cache_is_filled_once(
    channels: list[str], cache: Path, tmp_path: Path, timed: dict[str, float]
) -> None:
    lock = solve(env("envctl-greet"), platform="linux/amd64", channels=channels, cache_dir=cache)
    install(lock, prefix="/opt/envctl/envs/a", target=tmp_path / "a", cache_dir=cache)
    before = {p: p.stat().st_mtime_ns for p in (cache / "pkgs").rglob("*")}
    # The same packages, at a channel that cannot be reached: installing needs no download.
    unreachable = CondaLock.from_text(
        lock.text.replace(channels[0].rstrip("/"), DEAD_CHANNEL.rstrip("/"))
    )
    assert all(p.url.startswith(DEAD_CHANNEL) for p in unreachable.packages)
    start = time.perf_counter()
    install(unreachable, prefix="/opt/envctl/envs/b", target=tmp_path / "b", cache_dir=cache)
    timed["install (warm package cache)"] = time.perf_counter() - start
    assert (
        tmp_path / "b/share/envctl-hello/prefix.txt"
    ).read_text().strip() == "/opt/envctl/envs/b"
    # nothing was fetched or extracted again
    after = {
        p: p.stat().st_mtime_ns for p in (cache / "pkgs").rglob("*") if not p.name.endswith(".lock")
    }
    assert after == {p: t for p, t in before.items() if not p.name.endswith(".lock")}
    # and with an empty cache, the same lock does need the channel
    with pytest.raises(ChannelUnavailable):
        install(
            unreachable,
            prefix="/opt/envctl/envs/c",
            target=tmp_path / "c",
            cache_dir=tmp_path / "empty",
        )


def test_a_prefix_longer_than_the_placeholder_fails(
    channels: list[str], cache: Path, tmp_path: Path
) -> None:
    lock = solve(env("envctl-hello"), platform="linux/amd64", channels=channels, cache_dir=cache)
    with pytest.raises(StepFailed, match="longer than the placeholder") as info:
        install(lock, prefix="/opt/" + "x" * 300, target=tmp_path / "env", cache_dir=cache)
    assert info.value.deterministic


def test_install_needs_an_absolute_prefix_and_an_empty_target(
    channels: list[str], cache: Path, tmp_path: Path
) -> None:
    lock = solve(env("envctl-hello"), platform="linux/amd64", channels=channels, cache_dir=cache)
    with pytest.raises(ValueError, match="absolute"):
        install(lock, prefix="opt/env", target=tmp_path / "env", cache_dir=cache)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        install(lock, prefix="/opt/env", target=tmp_path / "used", cache_dir=cache)
