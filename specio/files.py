"""Reading spec files: the I/O edge in front of the pure `hashing` package.

A spec file may name other files: a conda environment, an Azure ML build context and its
Dockerfile. Where they come from is a `SpecFiles` source: `DiskFiles` reads them from disk
(`load_spec`), `specio.request.RequestFiles` from a resolve request that carries them by content,
and `RecordingFiles` reads them from disk while it keeps them for such a request.
`read_spec_parts` is the one walk over a spec that all share, so a spec sent to the service is
read exactly as it is read on disk, and every error still names the file, line and field it is
about. A request names files by `relative_path`: relative to the spec's folder, normalized.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import xxhash

from hashing import (
    CondaEnvironment,
    ContextEntry,
    ContextManifest,
    EnvironmentSpec,
    FileRef,
    ImageName,
    ParsedDockerfile,
    SpecDraft,
    SpecError,
    SpecFormat,
    complete_spec,
    parse_conda_text,
    parse_dockerfile,
    parse_spec_text,
)
from hashing.formats import named_files
from specio.context import scan_context

MAX_LINKS = 40  # symlinks followed in one path, as Linux's MAXSYMLINKS
MAX_TEXT_BYTES = 4 * 2**20  # a spec, conda file or Dockerfile: far above any real one
_IGNORE_FILES = (".dockerignore", ".amlignore")


class SpecFiles(Protocol):
    """Where a spec file and the files it names are read from."""

    @property
    def spec_source(self) -> str:
        """How errors name the spec file."""
        ...

    def spec_text(self) -> str:
        """The spec file's text."""
        ...

    def read_text(self, ref: FileRef, within: FileRef | None = None) -> tuple[str, str]:
        """The text of the file `ref` names (relative to the folder `within` names, if given)
        and how errors name that file; a SpecError at `ref` when it cannot be read."""
        ...

    def check_folder(self, ref: FileRef) -> None:
        """Raise a SpecError at `ref` unless it names a folder."""
        ...

    def scan(self, ref: FileRef) -> ContextManifest:
        """The build context in the folder `ref` names, as `scan_context` lists it."""
        ...


@dataclass(frozen=True)
class SpecParts:
    """A parsed spec and the parsed content of the files it names."""

    draft: SpecDraft
    conda: tuple[CondaEnvironment, dict[str, str]] | None = None
    dockerfile: ParsedDockerfile | None = None
    context: ContextManifest | None = None

    def complete(self, default_base: ImageName | None) -> EnvironmentSpec:
        """The EnvironmentSpec these parts make (base image not yet resolved)."""
        return complete_spec(
            self.draft,
            conda=self.conda,
            dockerfile=self.dockerfile,
            context=self.context,
            default_base=default_base,
        )


def read_spec_parts(files: SpecFiles, *, format: SpecFormat | None = None) -> SpecParts:
    """Parse a spec and every file it names, reading them from `files`."""
    draft = parse_spec_text(files.spec_text(), files.spec_source, format=format)
    conda = None
    if draft.conda_file is not None:
        conda = parse_conda_text(*files.read_text(draft.conda_file), platform=draft.platform)
    dockerfile = context = None
    if draft.context is not None:
        files.check_folder(draft.context)
        if draft.dockerfile is not None:
            dockerfile = parse_dockerfile(*files.read_text(draft.dockerfile, draft.context))
        # last: listing (or, for a request, writing) a context is the expensive step
        context = files.scan(draft.context)
    return SpecParts(draft, conda, dockerfile, context)


def gather_spec_files(files: SpecFiles, *, format: SpecFormat | None = None) -> None:
    """Read what a spec names from `files`, as `read_spec_parts` does, without parsing any of
    it (`hashing.spec.named_files`): a client without the parsers gathers a request this way,
    and the server checks it."""
    named = named_files(files.spec_text(), files.spec_source, format=format)
    if named.conda_file is not None:
        files.read_text(named.conda_file)
    if named.context is not None:
        files.check_folder(named.context)
        if named.dockerfile is not None:
            files.read_text(named.dockerfile, named.context)
        files.scan(named.context)


def load_spec(
    path: str | os.PathLike[str],
    *,
    format: SpecFormat | None = None,
    default_base: ImageName | None = None,
) -> EnvironmentSpec:
    """Read a spec file and every file it names into an EnvironmentSpec (base not yet resolved)."""
    return read_spec_parts(DiskFiles(Path(path)), format=format).complete(default_base)


class DiskFiles:
    """A spec file on disk; the files it names are relative to its folder."""

    def __init__(self, spec_path: Path) -> None:
        self.spec_path = spec_path
        self.folder = spec_path.parent

    @property
    def spec_source(self) -> str:
        """The spec file's path, as the caller gave it."""
        return str(self.spec_path)

    def spec_text(self) -> str:
        """The spec file's text."""
        return _read_text(self.spec_path, None)

    def path_of(self, ref: FileRef, within: FileRef | None = None) -> Path:
        """Where on disk the file or folder `ref` names is."""
        folder = self.folder if within is None else self.folder / within.path
        return folder / ref.path

    def read_text(self, ref: FileRef, within: FileRef | None = None) -> tuple[str, str]:
        """The text of the file `ref` names, and its path."""
        path = self.path_of(ref, within)
        return _read_text(path, ref), str(path)

    def check_folder(self, ref: FileRef) -> None:
        """Raise a SpecError at `ref` unless it names a folder."""
        root = self.path_of(ref)
        if not root.is_dir():
            raise ref.error(f"build context {str(root)!r} is not a directory")

    def scan(self, ref: FileRef) -> ContextManifest:
        """The build context in the folder `ref` names."""
        return scan_context(self.path_of(ref))


def _read_text(path: Path, named_by: FileRef | None) -> str:
    """A text file's content; a SpecError pointing at whoever named it when it cannot be read."""
    try:
        # non-blocking, then fstat: opening a FIFO must not wait for a writer, and the file
        # checked is the file read (no swap between a stat and the open)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            kind = os.fstat(file.fileno()).st_mode
            if stat.S_ISDIR(kind):
                raise IsADirectoryError
            data = file.read(MAX_TEXT_BYTES + 1) if stat.S_ISREG(kind) else None
        if data is None:
            message = f"not a regular file: {str(path)!r}"
        elif len(data) > MAX_TEXT_BYTES:
            message = f"larger than {MAX_TEXT_BYTES // 2**20} MiB: {str(path)!r}"
        else:  # universal newlines, as Path.read_text reads
            return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig").read()
    except FileNotFoundError:
        message = f"file not found: {str(path)!r}"
    except IsADirectoryError:
        message = f"is a directory, not a file: {str(path)!r}"
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text: {str(path)!r} ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        message = f"cannot read {str(path)!r}: {exc.strerror}"
    if named_by is None:
        raise SpecError(message, source=str(path))
    raise named_by.error(message)


@dataclass(frozen=True)
class KeptFile:
    """A file, folder or symlink that `RecordingFiles` read, for sending by content."""

    path: str  # as `relative_path` gives it
    kind: Literal["file", "dir", "symlink"]
    mode: int
    data: bytes = b""
    target: str = ""


class RecordingFiles(DiskFiles):
    """`DiskFiles` that also keeps everything it reads, for the service to read it the same way:
    the spec's text, each named file, the context folder, the context's entries as
    `scan_context` lists them, and its ignore files even when they exclude themselves (the
    service lists the context again, and needs the rules to exclude what they excluded here)."""

    def __init__(self, spec_path: Path) -> None:
        super().__init__(spec_path)
        self.text = ""
        self._kept: dict[str, KeptFile] = {}
        self._named: list[tuple[str, FileRef]] = []

    def spec_text(self) -> str:
        """The spec's text, kept."""
        self.text = super().spec_text()
        return self.text

    def read_text(self, ref: FileRef, within: FileRef | None = None) -> tuple[str, str]:
        """A named file's text; its bytes are kept."""
        result = super().read_text(ref, within)
        path = relative_path(ref, within)
        self._named.append((path, ref))
        self._kept.setdefault(path, _kept_file(path, self.path_of(ref, within)))
        return result

    def check_folder(self, ref: FileRef) -> None:
        """Check the context folder, and keep it: the service checks it too."""
        super().check_folder(ref)
        path = relative_path(ref)
        if names_folder(path):
            mode = stat.S_IMODE(self.path_of(ref).stat().st_mode)
            self._kept[path] = KeptFile(path, "dir", mode)

    def scan(self, ref: FileRef) -> ContextManifest:
        """List the context; keep every entry and the ignore files."""
        manifest = super().scan(ref)
        root, folder = self.path_of(ref), relative_path(ref)
        for entry in manifest.entries:
            path = posixpath.join(folder, entry.path)
            if entry.kind == "file":
                self._kept[path] = _kept_file(path, root / entry.path, entry)
            else:
                target = entry.digest if entry.kind == "symlink" else ""
                self._kept[path] = KeptFile(path, entry.kind, entry.mode, target=target)
        for name in _IGNORE_FILES:
            path = posixpath.join(folder, name)
            if path not in self._kept and (root / name).is_file():
                self._kept[path] = _kept_file(path, root / name)
        return manifest

    def kept(self) -> list[KeptFile]:
        """Everything kept, by path. A named file that is a symlink in the context is read
        through it on the service, so the end of its chain is kept too."""
        for named, ref in self._named:
            path = end_of_links(named, self._link_of, ref, ": it cannot be sent")
            if path not in self._kept:
                self._kept[path] = _kept_file(path, self.folder / path)
        return sorted(self._kept.values(), key=lambda file: file.path)

    def _link_of(self, path: str) -> str | None:
        file = self._kept.get(path)
        return file.target if file is not None and file.kind == "symlink" else None


def _kept_file(path: str, disk: Path, listed: ContextEntry | None = None) -> KeptFile:
    """A file's bytes and mode; when it is a context entry, as it was listed."""
    try:
        data = disk.read_bytes()
        mode = stat.S_IMODE(disk.stat().st_mode) if listed is None else listed.mode
    except OSError as exc:
        raise SpecError(f"cannot read {str(disk)!r}: {exc.strerror}", source=str(disk)) from None
    if listed is not None and xxhash.xxh3_128_hexdigest(data) != listed.digest:
        raise SpecError(f"{str(disk)!r} changed while it was read; try again", source=str(disk))
    return KeptFile(path, "file", mode, data)


def relative_path(ref: FileRef, within: FileRef | None = None) -> str:
    """What a spec names as a path relative to the spec's folder, normalized ('' for that
    folder), as a resolve request carries it; a SpecError at `ref` for an absolute path."""
    path = ref.path if within is None else posixpath.join(within.path, ref.path)
    if path.startswith("/"):
        raise ref.error(f"an absolute path cannot be sent by content: {path!r}")
    path = posixpath.normpath(path)
    return "" if path == "." else path


def names_folder(path: str) -> bool:
    """True when a relative path names a folder other than the spec's folder or one above it
    (which exist, whatever a request sends)."""
    return any(part != ".." for part in path.split("/")) if path else False


def end_of_links(
    path: str, link_of: Callable[[str], str | None], ref: FileRef, absolute: str
) -> str:
    """Where the chain of symlinks from `path` ends; `link_of` gives a path's link target
    (None: not a symlink). An absolute target is `ref`'s error, with `absolute` saying why."""
    for _ in range(MAX_LINKS):
        target = link_of(path)
        if target is None:
            return path
        followed = link_target(path, target)
        if followed is None:
            raise ref.error(f"{path!r} links to an absolute path{absolute}")
        path = followed
    raise ref.error(f"too many levels of symbolic links: {path!r}")


def link_target(path: str, target: str) -> str | None:
    """The relative path a symlink at `path` points to; None for an absolute target."""
    if target.startswith("/"):
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
