"""pip requirements: resolved once on the builder host by uv, fetched by hash, no pip in the image.

    resolve   `uv pip compile` for the image's Python version and platform, from the operator's
              index or find-links only (they are part of the key; a spec's own sources never
              reach the resolver), read from its `pylock.toml` → one wheel per package, the one
              the image runs best (packaging's tag order), pinned by sha256: the lock
    fetch     one pinned wheel, streamed and checked against its sha256, size bounded, from the
              operator's sources only (a `file:` wheel must be under one of its find-links)

The lock text (`name==version --hash=sha256:…`, sorted) is what the metadata records; the wheels
are installed into layers by builder.envlayers. Only wheels are accepted: building an sdist
would run its code on the host.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import uv
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from builder.envlayers import LockedWheel
from builder.errors import ChannelUnavailable, SolveError, StepFailed
from hashing.pip import CONTROL, pip_hashes, pip_option_flag

_ARCHES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
GLIBC_MINOR = 28  # the glibc every supported base has (builder.conda.GLIBC_VERSION)
MAX_WHEEL = 4 << 30  # bytes; no wheel of a real index comes near it
FETCH_TIMEOUT = 900  # seconds for one wheel, however slowly its server sends it
_CHUNK = 1 << 20
_NETWORK_TROUBLE = ("Connection", "connect", "timed out", "dns error", "Network", "tcp")


@dataclass(frozen=True)
class PipLock:
    """The resolution: one `name==version --hash=sha256:…` line per package, sorted, and the
    wheel each line pins."""

    text: str
    wheels: tuple[LockedWheel, ...] = ()

    @property
    def names(self) -> list[str]:
        """The pinned packages' names."""
        return [line.split("==", 1)[0] for line in self.text.splitlines() if line]


def platform_tags(platform: str) -> list[str]:
    """The platform tags of wheels that run on an image platform (glibc based), best first."""
    arch = _ARCHES.get(platform)
    if arch is None:
        raise SolveError(f"pip requirements are not supported for platform {platform}")
    manylinux = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    legacy = [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        legacy += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return [*manylinux, *legacy, f"linux_{arch}"]


def supported_tags(python_version: str, platform: str) -> list[Tag]:
    """The wheel tags CPython `python_version` runs on `platform`, best first."""
    major, minor = (int(part) for part in python_version.split("."))
    platforms = platform_tags(platform)
    abi = f"cp{major}{minor}"  # said, not taken from the host's own interpreter
    return [
        *cpython_tags((major, minor), abis=[abi], platforms=platforms),
        *compatible_tags((major, minor), interpreter=f"cp{major}{minor}", platforms=platforms),
    ]


def resolve(
    requirements: Sequence[str],
    options: Sequence[str],
    *,
    python_version: str,
    platform: str,
    work: Path,
    cache: Path,
) -> PipLock:
    """Pin `requirements` (and their dependencies) for `python_version` on `platform`;
    `options` are the operator's sources and the spec's allowlisted resolver options
    (CondaEnvironment.pip_arguments); `cache` is uv's cache folder."""
    work.mkdir(parents=True, exist_ok=True)
    # a requirement's `--hash` options say which files it may be: the wheel picked must be one
    allowed: dict[str, set[str]] = {}
    lines = []
    for requirement in requirements:
        if CONTROL.search(requirement):  # hashing refuses them too
            raise SolveError(f"a pip requirement holds a control character: {requirement!r}")
        text, hashes = pip_hashes(requirement)
        lines.append(text)
        if hashes:
            name = canonicalize_name(re.split(r"[\s\[<>=!~;@(]", text, maxsplit=1)[0])
            allowed.setdefault(name, set()).update(
                h.removeprefix("sha256:") for h in hashes if h.startswith("sha256:")
            )
    (work / "requirements.in").write_text("".join(f"{line}\n" for line in lines))
    out = work / "pylock.toml"
    arch = _ARCHES.get(platform)
    if arch is None:
        raise SolveError(f"pip requirements are not supported for platform {platform}")
    _uv(
        "pip", "compile", str(work / "requirements.in"), "-o", str(out),
        "--format", "pylock.toml", "--python-version", python_version,
        "--python-platform", f"{arch}-manylinux_2_{GLIBC_MINOR}",
        "--only-binary", ":all:", "--no-header", "--no-annotate", "--quiet",
        "--cache-dir", str(cache), *_uv_options(options),
    )  # fmt: skip
    try:
        lock = tomllib.loads(out.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SolveError(f"uv wrote no lock it can read back: {exc}") from None
    tags = {tag: rank for rank, tag in enumerate(supported_tags(python_version, platform))}
    wheels = [_best(package, tags, allowed) for package in lock.get("packages", [])]
    wheels.sort(key=lambda wheel: wheel.name)
    text = "".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels)
    return PipLock(text, tuple(wheels))


def _best(
    package: Mapping[str, Any],
    tags: Mapping[Tag, int],
    allowed: Mapping[str, set[str]] | None = None,
) -> LockedWheel:
    """The wheel of a pylock package entry that the image runs best, among those whose sha256
    the spec allows for it (`allowed`, by name: its `--hash` options), if it says."""
    name = canonicalize_name(str(package.get("name", "")))
    only = (allowed or {}).get(name)
    found: list[tuple[int, LockedWheel]] = []
    entries = package.get("wheels")
    candidates = list(entries) if isinstance(entries, list) else []
    archive = package.get("archive")  # a direct URL requirement (`name @ https://….whl`)
    if isinstance(archive, dict) and str(archive.get("url", "")).endswith(".whl"):
        candidates.append(archive)
    for entry in candidates:
        url = str(entry.get("url") or "")
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or str(entry.get("name", ""))
        sha256 = str((entry.get("hashes") or {}).get("sha256", ""))
        try:
            _, _, _, wheel_tags = parse_wheel_filename(filename)
        except ValueError:
            continue
        ranks = [tags[tag] for tag in wheel_tags if tag in tags]
        if only is not None and sha256 not in only:
            continue
        if ranks and len(sha256) == 64 and url:
            version = str(package.get("version", ""))
            found.append((min(ranks), LockedWheel(name, version, filename, url, sha256)))
    if not found and only is not None:
        raise SolveError(
            f"no wheel of {name} that runs on the image has a sha256 its --hash allows"
        )
    if not found:
        raise SolveError(f"no wheel of {name} runs on the image (envctl installs wheels only)")
    return min(found, key=lambda item: (item[0], item[1].filename))[1]


def fetch(wheel: LockedWheel, folder: Path, *, sources: Sequence[str]) -> Path:
    """Put `wheel` in `folder`, its sha256 checked as it is written; its path. A `file:` URL
    must lie under one of the operator's `--find-links` folders in `sources`."""
    if "/" in wheel.filename or wheel.filename.startswith("."):
        raise StepFailed(f"not a wheel file name: {wheel.filename!r}")
    target = folder / wheel.filename
    hasher = hashlib.sha256()
    size = 0
    parts = urlsplit(wheel.url)
    try:
        with open(target, "wb") as out:
            if parts.scheme == "file":
                path = Path(unquote(parts.path)).resolve()
                if not any(path.is_relative_to(root) for root in _local_roots(sources)):
                    raise StepFailed(f"{wheel.url} is not under the operator's find-links")
                with open(path, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        size += len(chunk)
                        if size > MAX_WHEEL:
                            raise StepFailed(f"{wheel.filename} is larger than {MAX_WHEEL} bytes")
                        hasher.update(chunk)
                        out.write(chunk)
            elif parts.scheme in ("http", "https"):
                with httpx.stream("GET", wheel.url, timeout=60, follow_redirects=True) as reply:
                    if reply.status_code >= 500 or reply.status_code in (408, 429):
                        raise ChannelUnavailable(f"{wheel.url}: HTTP {reply.status_code}")
                    if reply.status_code != 200:
                        raise StepFailed(f"cannot fetch {wheel.url}: HTTP {reply.status_code}")
                    deadline = time.monotonic() + FETCH_TIMEOUT
                    for chunk in reply.iter_bytes(_CHUNK):
                        if time.monotonic() > deadline:
                            raise ChannelUnavailable(
                                f"{wheel.url} took longer than {FETCH_TIMEOUT} s to fetch"
                            )
                        size += len(chunk)
                        if size > MAX_WHEEL:
                            raise StepFailed(f"{wheel.filename} is larger than {MAX_WHEEL} bytes")
                        hasher.update(chunk)
                        out.write(chunk)
            else:
                raise StepFailed(f"cannot fetch {wheel.url}: not http, https or file")
    except httpx.InvalidURL as exc:
        raise StepFailed(f"cannot fetch {wheel.url}: {exc}") from None
    except httpx.HTTPError as exc:
        raise ChannelUnavailable(f"cannot fetch {wheel.url}: {exc}") from None
    except OSError as exc:  # a missing file, a folder where a wheel should be
        target.unlink(missing_ok=True)
        raise StepFailed(f"cannot fetch {wheel.url}: {exc.strerror or exc}") from None
    if hasher.hexdigest() != wheel.sha256:
        target.unlink(missing_ok=True)
        raise StepFailed(f"{wheel.url} is not the pinned wheel (sha256 {hasher.hexdigest()})")
    return target


def _local_roots(sources: Sequence[str]) -> list[Path]:
    roots = []
    for option in sources:
        if pip_option_flag(option) != "--find-links":
            continue
        value = option.split("=", 1)[1] if "=" in option else option.split(None, 1)[-1]
        if value.startswith("file:"):
            value = unquote(urlsplit(value).path)
        if "://" not in value:
            roots.append(Path(value).resolve())
    return roots


def _uv_options(options: Sequence[str]) -> list[str]:
    """pip's source and resolver options as uv takes them."""
    out: list[str] = []
    for option in options:
        flag = pip_option_flag(option)
        value = None
        if "=" in option:
            value = option.split("=", 1)[1]
        elif " " in option:
            value = option.split(None, 1)[1]
        if flag == "--pre":
            out += ["--prerelease", "allow"]
        elif flag == "--trusted-host" and value is not None:
            out += ["--allow-insecure-host", value]
        elif flag in ("--prefer-binary", "--only-binary", "--require-hashes"):
            continue  # uv resolves wheels only here, and every wheel is pinned by hash
        elif value is None:
            out.append(flag)
        else:
            out += [flag, value]
    return out


def _uv(*args: str) -> None:
    command = [uv.find_uv_bin(), *args]
    # no uv.toml, no UV_* or PIP_* variables: the operator's sources are the only sources
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env |= {"UV_NO_CONFIG": "1", "UV_NO_PROGRESS": "1"}
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=600, env=env
        )
    except subprocess.TimeoutExpired:
        raise ChannelUnavailable("resolving the pip requirements took longer than 600 s") from None
    if result.returncode == 0:
        return
    reason = result.stderr.strip()
    if any(word in reason for word in _NETWORK_TROUBLE):
        raise ChannelUnavailable(f"uv could not reach its package index: {reason[-500:]}")
    raise SolveError(f"the pip requirements cannot be satisfied: {reason[-1500:]}")
