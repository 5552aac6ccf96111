"""An environment as layers: one per conda package, one per wheel, and one small top layer.

    conda_layers(lock, …)     each package installed alone (py-rattler) for ENV_PREFIX, its tree
                              the layer; the rest of the solve takes part but writes nothing
    wheel_layers(wheels, …)   each wheel installed alone (PyPA's installer) for the image's python
    finish(layers, …)         the layers in image order, grouped when they would pass the budget,
                              and the top layer: conda-meta, whose bytes depend on the whole lock

Every environment lives at ENV_PREFIX, so a package's layer depends only on the package (its
sha256 and channel), the python it is installed for, the layout and the tools that write it:
its key says exactly that, and the layer is made once per host (LayerCache) and sent once per
registry. Files that describe the whole environment (conda-meta) go into the top layer, built
from this build's own lock; a package's cached note keeps only its own files and paths.

Nothing of a package runs on the host: link scripts are not run, wheels are unpacked by a
library. A package is hostile until proven otherwise: its names must not be paths, its tree is
walked without following a link, and a wheel's files must stay inside its scheme's folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

import rattler
from installer import install as install_wheel
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from builder.conda import CondaLock, install_records
from builder.errors import CorruptLayer, LayerError, StepFailed
from builder.layer import GZIP_LEVEL, Layer, merge_layers, write_layer
from builder.layercache import LayerCache

ENV_PREFIX = "/opt/envctl/env"
"""Where every environment lives in its image."""

LAYOUT = 2
"""The layout of envctl's layers; a change of what goes where in a layer bumps it."""

MAX_LAYERS = 120  # in all (base and steps included): common engines refuse 125 and more
LAYER_BUDGET = 100  # of those, what envctl adds at most
BUCKETS = 16  # per section (conda, pip), for the packages that do not get a layer of their own
WORKERS = 2  # packages installed and written at once (each is I/O and zlib: GIL-free)

_META = "conda-meta"
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+!-]*")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+!-]*\.(conda|tar\.bz2)")
# the fields of a cached package's note: what rattler records of the files it linked
_NOTE_FIELDS = ("files", "paths_data")


def _tools() -> str:
    """What else decides a layer's bytes: the installers' and zlib's versions, the level."""
    text = "|".join(
        (version("py-rattler"), version("installer"), zlib.ZLIB_RUNTIME_VERSION, str(GZIP_LEVEL))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


TOOLS = _tools()


@dataclass(frozen=True)
class PackageLayer:
    """One package's layer: `section` is `conda` or `pip`; `note` what the top layer needs."""

    section: str
    name: str
    key: str
    layer: Layer
    note: Mapping[str, Any] = field(default_factory=dict)


def conda_layers(
    lock: CondaLock, *, cache: LayerCache, packages: Path, work: Path
) -> list[PackageLayer]:
    """Each package of `lock` as its own layer (cached by key); `packages` is rattler's package
    cache, `work` a folder for the installs. Raises StepFailed for a package whose names could
    be paths or that rattler cannot link, and ChannelUnavailable."""
    records = list(lock.records or CondaLock.from_text(lock.text, lock.platform).records)
    for record in records:
        _check_record(record)
    names = {record.name.normalized for record in records}
    python = _python(records)
    # a noarch: python package's files go where the python record says: its layer depends
    # on that record as a whole (3.13 and a free-threaded 3.13t lay out differently)
    python_id = None if python is None else (python.sha256 or b"").hex()[:16] or "unknown"

    def one(record: rattler.RepoDataRecord) -> PackageLayer:
        name = record.name.normalized
        key = conda_key(record, python_id)

        def make(out: Path) -> tuple[Layer, dict[str, Any]]:
            prefix = work / f"conda-{uuid.uuid4().hex}"
            try:
                install_records(
                    records, platform=lock.platform, prefix=ENV_PREFIX, target=prefix,
                    cache_dir=packages, ignored=names - {name},
                )  # fmt: skip
                meta = prefix / _META / f"{name}-{record.version}-{record.build}.json"
                installed = json.loads(meta.read_text())
                note = {field: installed.get(field) for field in _NOTE_FIELDS}
                layer = write_layer(
                    prefix, out, prefix=ENV_PREFIX, leave_out=(_META, "CACHEDIR.TAG")
                )
            finally:
                remove_tree(prefix)
            return layer, note

        layer, note = cache.noted(key, make)
        return PackageLayer("conda", name, key, layer, note)

    work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="envctl-layer") as pool:
        return list(pool.map(one, sorted(records, key=lambda r: r.name.normalized)))


def conda_key(record: rattler.RepoDataRecord, python: str | None) -> str:
    """A conda package's layer key: its sha256 and channel, the python record (its sha256's
    start) a `noarch: python` package is installed for, the layout and the tools."""
    sha = (record.sha256 or b"").hex()
    if not sha:
        raise StepFailed(f"{record.url}: the channel gives no sha256 for it")
    channel = hashlib.sha256(str(record.channel).rstrip("/").encode()).hexdigest()[:12]
    py = f"-py{python}" if record.noarch.python and python else ""
    return f"conda-{sha}{py}-{channel}-v{LAYOUT}-{TOOLS}"


def conda_meta_layer(
    lock: CondaLock, layers: Sequence[PackageLayer], out: Path, work: Path
) -> Layer:
    """The top layer: `conda-meta/` as conda and rattler read it, one record per package (this
    lock's record and the files its cached layer holds), and an empty history."""
    records = list(lock.records or CondaLock.from_text(lock.text, lock.platform).records)
    notes = {layer.name: layer.note for layer in layers if layer.section == "conda"}
    root = work / f"meta-{uuid.uuid4().hex}"
    folder = root / _META
    folder.mkdir(parents=True)
    try:
        for record in records:
            name = record.name.normalized
            entry = {**json.loads(record.to_json()), **notes.get(name, {})}
            entry["requested_specs"] = []
            text = json.dumps(entry, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            (folder / f"{name}-{record.version}-{record.build}.json").write_text(text + "\n")
        (folder / "history").write_text("")
        return write_layer(root, out, prefix=ENV_PREFIX)
    finally:
        remove_tree(root)


_SITE_PACKAGES = re.compile(r"lib/python3\.\d{1,2}t?/site-packages")


def _check_record(record: rattler.RepoDataRecord) -> None:
    """Refuse a record whose name, version, build or file name could be read as a path, or
    that would send a `noarch: python` package's files anywhere but its site-packages
    (rattler writes them under the python record's `python_site_packages_path`)."""
    site = record.python_site_packages_path
    if site is not None and not _SITE_PACKAGES.fullmatch(site):
        raise StepFailed(
            f"{record.url}: its python_site_packages_path {site!r} is not lib/pythonX.Y/"
            "site-packages"
        )
    parts = {
        "name": record.name.normalized,
        "version": str(record.version),
        "build": str(record.build),
    }
    for what, value in parts.items():
        if not _SAFE.fullmatch(value) or ".." in value:
            raise StepFailed(f"{record.url}: the package's {what} {value!r} is not a plain name")
    if not _FILE.fullmatch(record.file_name) or ".." in record.file_name:
        raise StepFailed(f"{record.url}: the package's file name is not a plain name")


def _python(records: Sequence[rattler.RepoDataRecord]) -> rattler.RepoDataRecord | None:
    for record in records:
        if record.name.normalized == "python":
            return record
    return None


def python_scheme(lock: CondaLock) -> PythonScheme | None:
    """Where wheels go for the python the lock installs, if it installs one: its version and
    its record's site-packages (a free-threaded python's is `lib/python3.13t/site-packages`)."""
    records = list(lock.records or CondaLock.from_text(lock.text, lock.platform).records)
    record = _python(records)
    if record is None:
        return None
    _check_record(record)
    version = ".".join(str(record.version).split(".")[:2])
    if not re.fullmatch(r"3\.\d{1,2}", version):
        raise StepFailed(f"{record.url}: not a python version envctl installs wheels for")
    site = record.python_site_packages_path or f"lib/python{version}/site-packages"
    return PythonScheme.conda(version, site=site)


# ------------------------------------------------------------------------------------ wheels


@dataclass(frozen=True)
class PythonScheme:
    """Where a wheel's files go in the image, for which python: `paths` has purelib, platlib,
    scripts, data and include (absolute, plain); `interpreter` is the scripts' shebang."""

    version: str
    interpreter: str
    paths: Mapping[str, str]

    @classmethod
    def conda(cls, python: str, *, site: str | None = None) -> PythonScheme:
        """The scheme of the environment's own python (`MAJOR.MINOR`), its site-packages
        relative to the prefix (`lib/pythonX.Y/site-packages` unless said)."""
        site = f"{ENV_PREFIX}/{site or f'lib/python{python}/site-packages'}"
        return cls(
            python,
            f"{ENV_PREFIX}/bin/python{python}",
            {
                "purelib": site,
                "platlib": site,
                "scripts": f"{ENV_PREFIX}/bin",
                "data": ENV_PREFIX,
                "include": f"{ENV_PREFIX}/include/python{python}",
            },
        )

    @classmethod
    def from_json(cls, text: str) -> PythonScheme:
        """What ASK_PYTHON printed in a base image; ValueError unless it is plainly one."""
        try:
            answer = json.loads(text)
            found = cls(
                str(answer["version"]),
                str(answer["executable"]),
                {name: str(answer["paths"][name]) for name in _SCHEME_KEYS},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a python scheme: {text[:300]!r}") from exc
        if not re.fullmatch(r"3\.\d{1,2}", found.version):
            raise ValueError(f"not a python version: {found.version!r}")
        for path in (found.interpreter, *found.paths.values()):
            if not re.fullmatch(r"/[A-Za-z0-9._+/-]{0,200}", path) or ".." in path:
                raise ValueError(f"not a plain absolute path: {path!r}")
        return found

    def as_json(self) -> str:
        return json.dumps(
            {"version": self.version, "executable": self.interpreter, "paths": dict(self.paths)},
            sort_keys=True,
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()[:12]


_SCHEME_KEYS = ("purelib", "platlib", "scripts", "data", "include")

ASK_PYTHON = (
    "import json, sys, sysconfig; p = sysconfig.get_paths(); print(json.dumps({"
    "'version': '%d.%d' % sys.version_info[:2], 'executable': sys.executable, "
    f"'paths': {{k: p[k] for k in {list(_SCHEME_KEYS)!r}}}}}))"
)
"""What a base image's python3 is asked, once per base digest: its version and scheme."""


@dataclass(frozen=True)
class LockedWheel:
    """One wheel of the pip lock: the distribution, the file and where it comes from."""

    name: str
    version: str
    filename: str
    url: str
    sha256: str


def wheel_layers(
    wheels: Sequence[LockedWheel],
    *,
    fetch: Callable[[LockedWheel, Path], Path],
    scheme: PythonScheme,
    sources: Sequence[str],
    cache: LayerCache,
    work: Path,
) -> list[PackageLayer]:
    """Each wheel as its own layer, installed for `scheme`; `fetch(wheel, folder)` puts the
    wheel file (its sha256 checked) in `folder`. `sources` are the operator's pip sources."""
    origin = hashlib.sha256("\n".join(sources).encode()).hexdigest()[:12]

    def one(wheel: LockedWheel) -> PackageLayer:
        key = f"pip-{wheel.sha256}-{scheme.digest}-{origin}-v{LAYOUT}-{TOOLS}"

        def make(out: Path) -> tuple[Layer, dict[str, Any]]:
            folder = work / f"pip-{uuid.uuid4().hex}"
            try:
                folder.mkdir(parents=True)
                path = fetch(wheel, folder)
                root = folder / "root"
                _install_wheel(path, scheme, root)
                return write_layer(root, out), {}
            finally:
                remove_tree(folder)

        layer, note = cache.noted(key, make)
        return PackageLayer("pip", wheel.name, key, layer, note)

    work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="envctl-wheel") as pool:
        return list(pool.map(one, sorted(wheels, key=lambda w: w.name)))


def _install_wheel(path: Path, scheme: PythonScheme, root: Path) -> None:
    """Unpack the wheel at `path` under `root` as if `root` were the image's `/`."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = PurePosixPath(name).parts
            if name.startswith("/") or "\\" in name or ".." in parts:
                raise StepFailed(f"{path.name}: the wheel holds a file outside itself: {name!r}")
    destination = SchemeDictionaryDestination(
        {name: value for name, value in scheme.paths.items() if name != "include"}
        | {"headers": scheme.paths["include"]},
        interpreter=scheme.interpreter,
        script_kind="posix",
        destdir=str(root),
    )
    try:
        with WheelFile.open(path) as source:
            source.validate_record()
            install_wheel(source, destination, additional_metadata={})
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, RecursionError) as exc:
        raise StepFailed(f"cannot install the wheel {path.name}: {exc}") from None
    except Exception as exc:  # installer's own errors (a bad RECORD, a wheel it cannot read)
        if type(exc).__module__.startswith("installer"):
            raise StepFailed(f"cannot install the wheel {path.name}: {exc}") from None
        raise
    _inside(root, scheme)


def _inside(root: Path, scheme: PythonScheme) -> None:
    """Refuse a wheel that wrote outside its scheme's folders (a `.data/data/` path upward)."""
    allowed = [PurePosixPath(p.lstrip("/")) for p in scheme.paths.values()]
    for path in root.rglob("*"):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_symlink():
            raise StepFailed(f"a wheel wrote a symlink: /{relative}")
        if path.is_dir():
            continue
        if not any(relative.is_relative_to(folder) for folder in allowed):
            raise StepFailed(f"a wheel wrote outside its python's folders: /{relative}")


# ----------------------------------------------------------------------------- the image order


def finish(layers: Sequence[PackageLayer], *, budget: int, cache: LayerCache) -> list[PackageLayer]:
    """The package layers in image order (conda, then pip, each by name), at most `budget - 1`
    of them (the top layer comes after). Past that, the biggest packages keep their own layer
    and the rest share BUCKETS per section, a package's bucket chosen by its name: adding one
    package then remakes one bucket, not all of them."""
    budget = max(budget, 2 * BUCKETS + 1)  # room for the buckets and the top layer
    ordered = sorted(layers, key=lambda p: (p.section != "conda", p.name))
    if len(ordered) + 1 <= budget:
        return ordered
    own = budget - 1 - 2 * BUCKETS
    biggest = sorted(ordered, key=lambda p: (-p.layer.size, p.name))[:own]
    keep = {id(p) for p in biggest}
    out: list[PackageLayer] = []
    for section in ("conda", "pip"):
        mine = [p for p in ordered if p.section == section]
        out += [p for p in mine if id(p) in keep]
        buckets: dict[int, list[PackageLayer]] = {}
        for package in mine:
            if id(package) not in keep:
                buckets.setdefault(_bucket(package.name), []).append(package)
        for number in sorted(buckets):
            out.append(_merged(section, number, buckets[number], cache))
    return out


def _bucket(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % BUCKETS


def _merged(
    section: str, number: int, members: Sequence[PackageLayer], cache: LayerCache
) -> PackageLayer:
    keys = "\n".join(member.key for member in members)
    key = f"bucket-{section}-{hashlib.sha256(keys.encode()).hexdigest()}"

    def parts() -> list[Iterator[bytes]]:
        return [cache.read(member.key, member.layer) for member in members]

    try:
        layer = cache.layer(key, lambda out: merge_layers(parts(), out))
    except (tarfile.TarError, zlib.error, EOFError, OSError, LayerError) as exc:
        # a member's cached blob is damaged where the tar or gzip reader sees it first:
        # forget the members, so the next build makes them (and this bucket) again
        for member in members:
            cache.drop(member.key)
        if isinstance(exc, CorruptLayer):
            raise
        raise CorruptLayer(f"a cached layer of {key} is corrupt ({exc}); dropped") from None
    note = {"members": [member.name for member in members]}
    return PackageLayer(section, f"{section}-bucket-{number:02d}", key, layer, note)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it, however deep (never raises for a missing one)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except (RecursionError, OSError):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["rm", "-rf", "--", str(path)], check=False, timeout=600)
