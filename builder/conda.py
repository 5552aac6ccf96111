"""Conda environments without conda: py-rattler solves and installs, conda-lock writes the lock.

    solve(env, platform=…, channels=…, cache_dir=…)   -> CondaLock   (fetches repodata only)
    install(lock, prefix=…, target=…, cache_dir=…)                    (fetches uncached packages)

`install` writes the files under `target` (a folder of the build context on this host) but
patches text and binary prefix placeholders with `prefix`, the path the environment has inside
the image: rattler's `target_prefix` is where files go, its `alternative_target_prefix` what is
written into them. Link scripts are never run: nothing of the environment runs on the host.

`cache_dir` is shared by every build on this host: `<cache_dir>/repodata` holds the channels'
repodata, `<cache_dir>/pkgs` each package downloaded and extracted once (rattler locks its
entries, so concurrent builds may share it).

Errors: an unsolvable environment is a `SolveError` carrying the solver's explanation, raised
before any image work; a channel that cannot be reached is `ChannelUnavailable` (transient); a
package that cannot be fetched for good or linked is `StepFailed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import re
import tempfile
import warnings
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import rattler
from rattler.exceptions import GatewayError, InstallerError, SolverError

from builder.errors import BuildTimeout, ChannelUnavailable, SolveError, StepFailed
from hashing.conda import SUBDIRS, CondaEnvironment
from hashing.errors import SpecError
from hashing.imageref import InvalidReference, normalize_platform

with warnings.catch_warnings():
    # conda-lock's vendored conda warns about its own internals on import; nothing for us to do
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    from conda_lock.lockfile import (  # type: ignore[import-untyped, unused-ignore]
        parse_conda_lock_file,
        write_conda_lock_file,
    )
    from conda_lock.lockfile.v2prelim.models import (  # type: ignore[import-untyped, unused-ignore]
        HashModel,
        LockedDependency,
        Lockfile,
        LockMeta,
    )

T = TypeVar("T")


# The system the solver assumes (pixi's defaults): the base image is not inspected, so these are
# a floor every supported base meets (Debian 10+, RHEL 8+, Ubuntu 20.04+).
LINUX_VERSION = "4.18"
GLIBC_VERSION = "2.28"

_LOCK_NAME = "conda-lock.yml"
# A GatewayError for a channel that does not exist, as opposed to one that cannot be reached.
_NOT_FOUND = re.compile(r"HTTP status client error \((404|410)\b|could not find subdir")
_TRANSIENT = re.compile(
    r"error sending request|error decoding response body|timed out|HTTP status server error"
    r"|HTTP status client error \((408|429)\b"
)
_NAME = re.compile(r"^[^\s\[=<>!~]+")


def conda_subdir(platform: str) -> str:
    """The conda subdir of an image platform: `linux/amd64` is `linux-64`; SpecError if none."""
    try:
        normal = normalize_platform(platform)
    except InvalidReference as exc:
        raise SpecError(str(exc), field="platform") from None
    subdir = SUBDIRS.get(normal)
    if subdir is None:
        known = ", ".join(SUBDIRS)
        raise SpecError(
            f"no conda packages for platform {normal} (known: {known})", field="platform"
        )
    return subdir


def virtual_packages(subdir: str) -> list[rattler.GenericVirtualPackage]:
    """The virtual packages (`__unix`, `__linux`, `__glibc`, `__archspec`) solves assume."""
    arch = rattler.Subdir(subdir).arch

    def virtual(name: str, version: str, build: str = "0") -> rattler.GenericVirtualPackage:
        return rattler.GenericVirtualPackage(
            rattler.PackageName(name), rattler.Version(version), rattler.BuildString(build)
        )

    return [
        virtual("__unix", "0"),
        virtual("__linux", LINUX_VERSION),
        virtual("__glibc", GLIBC_VERSION),
        virtual("__archspec", "1", str(arch) if arch is not None else "0"),
    ]


@dataclass(frozen=True)
class LockedPackage:
    """One package of a lock, as a person reads it."""

    name: str
    version: str
    build: str
    subdir: str
    url: str
    sha256: str


@dataclass(frozen=True)
class CondaLock:
    """A solved environment for one subdir: its packages, sorted by name, and the lock file text
    (conda-lock's format). `records` are what rattler installs; they do not take part in `==`."""

    platform: str
    packages: tuple[LockedPackage, ...]
    text: str
    records: tuple[rattler.RepoDataRecord, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_text(cls, text: str, platform: str | None = None) -> CondaLock:
        """Read a conda-lock file (as `solve` writes it) back into a lock that can be installed.

        `platform` (a subdir) chooses among a multi-platform lock's platforms; ValueError when
        the file is not a conda-lock file, has pip packages, or the platform is ambiguous.
        """
        lockfile = _parse(text)
        platforms = list(lockfile.metadata.platforms)
        if platform is None:
            if len(platforms) != 1:
                raise ValueError(f"the lock has platforms {platforms}: say which one")
            platform = platforms[0]
        if platform not in platforms:
            raise ValueError(f"the lock has no platform {platform} (it has {platforms})")
        deps = [d for d in lockfile.package if d.platform == platform]
        pip = sorted(d.name for d in deps if d.manager != "conda")
        if pip:
            raise ValueError(f"pip packages in a conda lock are not supported: {pip}")
        records = tuple(_record(d) for d in deps)
        return cls(platform, _packages(records), text, records)


def solve(
    env: CondaEnvironment,
    *,
    platform: str,
    channels: Sequence[str] | None,
    cache_dir: Path,
    timeout: float = 120,
) -> CondaLock:
    """Solve `env`'s dependencies for an image `platform` into a lock.

    `channels`, when given, replace the environment's own; either way they are in priority order
    and strict: a package comes from the first channel that has it. Raises SolveError
    (unsolvable, no channels, a channel that does not exist: channels are part of the key, so
    that is the key's failure), ChannelUnavailable (a channel that cannot be reached) or
    BuildTimeout.
    """
    subdir = conda_subdir(platform)
    # `…/channel` and `…/channel/` are one channel (hashing strips the slash of the env's own)
    urls = [url.rstrip("/") for url in (channels or env.channels)]
    if not urls:
        raise SolveError(
            "no conda channels: list channels in the environment or set ENVCTL_CHANNELS"
        )
    specs = list(env.dependencies)
    gateway = rattler.Gateway(cache_dir=cache_dir / "repodata")
    vpackages = virtual_packages(subdir)

    def run() -> Awaitable[list[rattler.RepoDataRecord]]:
        return rattler.solve(
            sources=[rattler.Channel(url) for url in urls],
            specs=specs,
            gateway=gateway,
            platforms=[rattler.Subdir(subdir), rattler.Subdir("noarch")],
            virtual_packages=vpackages,
            channel_priority=rattler.ChannelPriority.Strict,
            timeout=datetime.timedelta(seconds=timeout),
        )

    what = f"{', '.join(specs) or 'nothing'} for {subdir} from {', '.join(urls)}"
    try:
        records = _run(run, timeout)
    except SolverError as exc:
        raise SolveError(f"cannot solve {what}:\n{_reason(exc)}") from None
    except GatewayError as exc:
        reason = _reason(exc)
        if _NOT_FOUND.search(reason):
            raise SolveError(f"a channel does not exist: {reason}") from None
        raise ChannelUnavailable(
            f"cannot read the channels ({', '.join(urls)}): {reason}"
        ) from None
    except TimeoutError:
        raise BuildTimeout(f"solving {what} took longer than {timeout:g} s") from None
    return _lock(records, subdir, urls, specs, vpackages)


def install(
    lock: CondaLock, *, prefix: str, target: Path, cache_dir: Path, timeout: float = 1800
) -> None:
    """Install `lock` under `target` (empty or missing) so that it works once moved to `prefix`.

    Packages are fetched into `<cache_dir>/pkgs` unless already there, then linked into `target`
    with every prefix placeholder (text and binary) replaced by `prefix`. Files without a
    placeholder are hard links into the cache when it is on the same file system: replace,
    never edit, files under `target`. Link scripts are not run. Raises ChannelUnavailable,
    StepFailed (a package that cannot be fetched or linked, e.g. `prefix` longer than a
    binary placeholder) or BuildTimeout.
    """
    records = list(lock.records or CondaLock.from_text(lock.text, lock.platform).records)
    install_records(
        records, platform=lock.platform, prefix=prefix, target=target,
        cache_dir=cache_dir / "pkgs", timeout=timeout,
    )  # fmt: skip
    _tidy(target)


def install_records(
    records: Sequence[rattler.RepoDataRecord],
    *,
    platform: str,
    prefix: str,
    target: Path,
    cache_dir: Path,
    ignored: Collection[str] = (),
    timeout: float = 1800,
) -> None:
    """Install `records` (a whole solve, for subdir `platform`) under `target` for `prefix`, as
    `install` does, but leave out the packages named in `ignored`: they take part in the
    transaction (a `noarch: python` package finds its python's version) and write nothing.
    `cache_dir` is rattler's package cache itself."""
    if not PurePosixPath(prefix).is_absolute():
        raise ValueError(f"the prefix must be an absolute path: {prefix!r}")
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"install needs an empty target folder: {target}")

    def run() -> Awaitable[None]:
        return rattler.install(
            list(records),
            target_prefix=target,
            alternative_target_prefix=prefix,
            cache_dir=cache_dir,
            installed_packages=[],
            ignored_packages=set(ignored),
            platform=rattler.Subdir(platform),
            execute_link_scripts=False,
            show_progress=False,
        )

    try:
        _run(run, timeout)
    except InstallerError as exc:
        reason = _reason(exc)
        if _TRANSIENT.search(reason):
            raise ChannelUnavailable(f"cannot fetch packages: {reason}") from None
        raise StepFailed(f"cannot install the conda environment at {prefix}: {reason}") from None
    except TimeoutError:
        raise BuildTimeout(
            f"installing the conda environment took longer than {timeout:g} s"
        ) from None


def _run(factory: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run a py-rattler coroutine to completion, with or without an event loop in this thread.

    Under a running loop (an async caller), it runs on a loop of its own in a worker thread;
    the caller blocks until it is done, as it would for any other blocking call.
    """

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="envctl-conda") as pool:
        return pool.submit(lambda: asyncio.run(bounded())).result()


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _packages(records: Sequence[rattler.RepoDataRecord]) -> tuple[LockedPackage, ...]:
    packages = (
        LockedPackage(
            r.name.normalized,
            str(r.version),
            str(r.build),
            r.subdir,
            r.url,
            (r.sha256 or b"").hex(),
        )
        for r in records
    )
    return tuple(sorted(packages, key=lambda p: (p.name, p.version, p.build)))


def _lock(
    records: list[rattler.RepoDataRecord],
    subdir: str,
    channels: list[str],
    specs: list[str],
    vpackages: list[rattler.GenericVirtualPackage],
) -> CondaLock:
    """Write the solve's records as a conda-lock file with conda-lock's own models."""
    # conda-lock's content hash is over its own inputs; ours is over what the solve saw.
    solved_from = {
        "channels": channels,
        "specs": specs,
        "subdir": subdir,
        "virtual_packages": sorted(
            f"{v.name.normalized} {v.version} {v.build_string}" for v in vpackages
        ),
    }
    content_hash = hashlib.sha256(json.dumps(solved_from, sort_keys=True).encode()).hexdigest()
    lockfile = Lockfile(
        package=[_locked_dependency(r, subdir) for r in records],
        metadata=LockMeta(
            content_hash={subdir: content_hash},
            channels=channels,
            platforms=[subdir],
            sources=[],
        ),
    )
    with tempfile.TemporaryDirectory(prefix="envctl-lock-") as tmp:
        path = Path(tmp) / _LOCK_NAME
        write_conda_lock_file(lockfile, path, metadata_choices=set(), include_help_text=False)
        text = path.read_text()
    lock = CondaLock(subdir, _packages(records), text, tuple(records))
    reread = CondaLock.from_text(text)
    if reread != lock:  # compares platform, packages and text: conda-lock must read what it wrote
        raise RuntimeError(f"conda-lock does not read back the lock it wrote:\n{text}")
    return lock


def _locked_dependency(record: rattler.RepoDataRecord, subdir: str) -> Any:
    if record.md5 is None:
        raise SolveError(f"the channel gives no md5 for {record.url}: conda-lock needs one")
    dependencies: dict[str, str] = {}
    for dep in record.depends:
        match = _NAME.match(dep.strip())
        if match is not None:
            dependencies[match.group(0)] = dep.strip()[match.end() :].strip() or "*"
    return LockedDependency(
        name=record.name.normalized,
        version=str(record.version),
        manager="conda",
        platform=subdir,
        dependencies=dependencies,
        url=record.url,
        hash=HashModel(md5=record.md5.hex(), sha256=record.sha256.hex() if record.sha256 else None),
        categories={"main"},
        build=str(record.build),
    )


def _parse(text: str) -> Any:
    with tempfile.TemporaryDirectory(prefix="envctl-lock-") as tmp:
        path = Path(tmp) / _LOCK_NAME
        path.write_text(text)
        try:
            return parse_conda_lock_file(path)
        except Exception as exc:  # yaml, pydantic and conda-lock's own errors alike
            raise ValueError(f"not a conda-lock file: {exc}") from exc


def _record(dep: Any) -> rattler.RepoDataRecord:
    """The install record of one locked package: its URL names its subdir and channel.

    A lock does not keep `noarch`; rattler links by the package's own `info/index.json`.
    """
    url = str(dep.url)
    location = PurePosixPath(url.split("?", 1)[0])
    subdir = location.parent.name
    channel = url[: url.rindex(f"/{subdir}/")] + "/"
    build = str(dep.build or "")
    build_number = re.search(r"(?:^|_)(\d+)$", build)
    package = rattler.PackageRecord(
        name=dep.name,
        version=dep.version,
        build=rattler.BuildString(build),
        build_number=int(build_number.group(1)) if build_number else 0,
        subdir=subdir,
        depends=[f"{name} {spec}".strip() for name, spec in dep.dependencies.items()],
        md5=bytes.fromhex(dep.hash.md5),
        sha256=bytes.fromhex(dep.hash.sha256) if dep.hash.sha256 else None,
    )
    return rattler.RepoDataRecord(package, location.name, url, channel)


def _tidy(target: Path) -> None:
    """Remove what rattler writes about this host from the environment.

    rattler tags the prefix as a cache folder (CACHEDIR.TAG) and records in conda-meta where
    each package was extracted on the host; neither belongs in an image, and the host's paths
    would make the same lock give different files on different hosts.
    """
    with contextlib.suppress(FileNotFoundError):
        (target / "CACHEDIR.TAG").unlink()
    for meta in sorted((target / "conda-meta").glob("*.json")):
        record = json.loads(meta.read_text())
        record.pop("extracted_package_dir", None)
        record.pop("link", None)
        meta.write_text(json.dumps(record, indent=2, ensure_ascii=False))
