"""pip requirements: resolved once on the builder host, installed in the image without resolving.

    resolve   pip's own resolver (`pip install --dry-run --report`) for the image's Python version
              and platform, from the operator's index or find-links only (they are part of the
              key; a spec's own sources never reach pip) → pins with hashes: the lock
    download  exactly the pinned wheels, checked against their hashes, into the build context
    install   in the image: `pip install --no-deps --no-index --require-hashes`, offline

So the image gets what the lock says (recorded in the metadata), and the build steps need no
network. Only wheels are accepted: building sdists would run arbitrary code on the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from builder.errors import ChannelUnavailable, SolveError

_ARCHES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
_NETWORK_TROUBLE = ("Connection", "Max retries", "Temporary failure", "timed out", "Network")


@dataclass(frozen=True)
class PipLock:
    """The resolution: one `name==version --hash=sha256:…` line per package, sorted."""

    text: str

    @property
    def names(self) -> list[str]:
        """The pinned packages' names."""
        return [line.split("==", 1)[0] for line in self.text.splitlines() if line]


def platform_tags(platform: str) -> list[str]:
    """pip `--platform` tags of the wheels that run on an image platform (glibc based)."""
    arch = _ARCHES.get(platform)
    if arch is None:
        raise SolveError(f"pip requirements are not supported for platform {platform}")
    return [f"manylinux_2_{minor}_{arch}" for minor in (17, 28, 31, 34, 36)] + [
        f"manylinux2014_{arch}",
        f"linux_{arch}",
    ]


def resolve(
    requirements: Sequence[str],
    options: Sequence[str],
    *,
    python_version: str,
    platform: str,
    work: Path,
) -> PipLock:
    """Pin `requirements` (and their dependencies) for `python_version` on `platform`;
    `options` are the operator's sources and the spec's allowlisted resolver options
    (CondaEnvironment.pip_arguments)."""
    work.mkdir(parents=True, exist_ok=True)
    report = work / "pip-report.json"
    _pip(
        "install", "--dry-run", "--ignore-installed", "--report", str(report),
        "--target", str(work / "never-written"),
        *_target(python_version, platform), *options, *requirements,
    )  # fmt: skip
    pins = []
    for item in json.loads(report.read_text())["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None:
            raise SolveError(f"pip found {name} without a sha256 to pin it by")
        pins.append(f"{name}=={item['metadata']['version']} --hash=sha256:{digest}")
    return PipLock("".join(f"{pin}\n" for pin in sorted(pins)))


def download(
    lock: PipLock, options: Sequence[str], *, python_version: str, platform: str, target: Path
) -> None:
    """Fetch exactly the pinned wheels into `target` (pip checks every hash), from where
    `options` say."""
    target.mkdir(parents=True, exist_ok=True)
    pins = target.parent / "pip.lock.txt"
    pins.write_text(lock.text)
    _pip(
        "download", "--no-deps", "--require-hashes", "-d", str(target), "-r", str(pins),
        *_target(python_version, platform), *options,
    )  # fmt: skip


def _target(python_version: str, platform: str) -> list[str]:
    tags = [arg for tag in platform_tags(platform) for arg in ("--platform", tag)]
    return [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        *tags,
    ]


def _pip(*args: str) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        *args,
        "--quiet",
        "--isolated",  # no PIP_* variables, no pip.conf: the operator's sources are the sources
        "--no-input",
        "--disable-pip-version-check",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode == 0:
        return
    reason = "\n".join(
        line for line in result.stderr.splitlines() if "WARNING: Location" not in line
    )
    if any(word in reason for word in _NETWORK_TROUBLE):
        raise ChannelUnavailable(f"pip could not reach its package index: {reason.strip()[-500:]}")
    raise SolveError(f"pip cannot satisfy the requirements: {reason.strip()[-1500:]}")
