"""Build contexts on disk: what Docker would send, listed and hashed, and copies to build from.

A context is listed as Docker sends it: `.dockerignore` with docker-py's reading of it (the
builder sends contexts through the same engine API), `.amlignore` with gitignore rules as Azure ML
applies them; every entry is path, kind, mode and the xxh3_128 of its bytes. A build copies the
listed files and checks them against the list, so what is built is what was keyed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from operator import attrgetter
from pathlib import Path
from typing import Protocol, TypeVar

import pathspec
import xxhash

from hashing import ContextEntry, ContextManifest, SpecError

_CHUNK = 1 << 20
_by_path = attrgetter("path")
_T = TypeVar("_T")


def scan_context(
    root: str | os.PathLike[str], *, hasher: FileHasher | None = None
) -> ContextManifest:
    """List a build context as Docker would send it: relative path, kind, mode, content hash.

    Keys are defined with the default hasher (xxh3_128); `hasher` lets a benchmark run the
    same walk and I/O with another hash.
    """
    root = Path(root)
    hasher = hasher or FileHasher()
    entries = []

    def children(folder: str) -> Iterator[tuple[str, bool, os.DirEntry[str]]]:
        with os.scandir(root / folder) as it:
            for entry in it:
                yield entry.name, entry.is_dir(follow_symlinks=False), entry

    docker, aml = _ignores(
        _ignore_lines(root / ".dockerignore"), _ignore_lines(root / ".amlignore")
    )
    for rel, entry in _walk(children, docker, aml):
        st = entry.stat(follow_symlinks=False)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append(ContextEntry(rel, "symlink", mode, os.readlink(entry.path)))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(ContextEntry(rel, "dir", mode))
        elif stat.S_ISREG(st.st_mode):
            entries.append(ContextEntry(rel, "file", mode, hasher.hash(entry.path, st.st_size)))
        # sockets, fifos and devices cannot be sent in a build context: Docker skips them too
    entries.sort(key=_by_path)
    return ContextManifest(tuple(entries), root=str(root))


def list_tree(
    tree: Mapping[str, ContextEntry | None], dockerignore: str | None, amlignore: str | None
) -> tuple[ContextManifest, list[str]]:
    """What `scan_context` lists for a context held in memory: `tree` has every entry by its
    relative path, and None for a folder that holds entries but is not one itself (it would
    exist on disk, with no mode of its own); the ignore files' texts, if there are any.

    Returns the manifest (with no root) and the None folders it would list, in walk order.
    """
    folders: dict[str, list[str]] = {}
    for rel in tree:
        parent, _, name = rel.rpartition("/")
        folders.setdefault(parent, []).append(name)

    def children(folder: str) -> Iterator[tuple[str, bool, str]]:
        prefix = folder + "/" if folder else ""
        for name in folders.get(folder, ()):
            entry = tree[prefix + name]
            yield name, entry is None or entry.kind == "dir", prefix + name

    docker, aml = _ignores(_pattern_lines(dockerignore), _pattern_lines(amlignore))
    entries, unlisted = [], []
    for _, rel in _walk(children, docker, aml):
        entry = tree[rel]
        if entry is None:
            unlisted.append(rel)
        else:
            entries.append(entry)
    entries.sort(key=_by_path)
    return ContextManifest(tuple(entries)), unlisted


def _ignores(
    docker_lines: list[str], aml_lines: list[str]
) -> tuple[DockerIgnore | None, pathspec.GitIgnoreSpec | None]:
    docker = DockerIgnore(docker_lines) if docker_lines else None
    aml = pathspec.GitIgnoreSpec.from_lines(aml_lines) if aml_lines else None
    return docker, aml


class DockerIgnore:
    """`.dockerignore` patterns with docker-py's semantics, each compiled once.

    The builder sends contexts through docker-py, so its reading is what an image sees: docker-py's
    `Pattern` cleans each pattern and its `fnmatch.translate` makes the regex (matching ignores
    case, as docker-py's does); the loop mirrors `PatternMatcher.matches` (the last matching
    pattern wins; a pattern also matches a path whose leading folders it matches). Unlike
    docker-py we do not re-include `.dockerignore`: docker-py sends it for the daemon to read,
    and the daemon deletes it (and the Dockerfile) when the patterns exclude it.
    """

    def __init__(self, lines: list[str]) -> None:
        # docker-py's, imported only for a context that has a .dockerignore (it loads requests)
        try:
            from docker.utils import fnmatch as docker_fnmatch
            from docker.utils.build import Pattern
        except ImportError:  # a client installed alone: the rules are docker-py's to apply
            raise SpecError(
                "the build context has a .dockerignore, which envctl reads with docker-py: "
                "install it beside the client (pip install docker)",
                source=".dockerignore",
            ) from None

        patterns = [p for p in (Pattern(line) for line in lines) if p.dirs]
        self._rules = [
            (
                p.exclusion,
                len(p.dirs),
                re.compile(docker_fnmatch.translate(p.cleaned_pattern.lower())),
            )
            for p in patterns
        ]
        self._exceptions = [p.cleaned_pattern for p in patterns if p.exclusion]
        # Without `!` exceptions the last-match-wins loop is "any pattern matches", and a walk
        # that prunes excluded folders never needs the leading-folders test: one regex will do.
        self._any = (
            None
            if self._exceptions
            else re.compile("|".join(f"(?:{regex.pattern})" for _, _, regex in self._rules))
        )

    def excludes(self, rel: str, *, ancestors_kept: bool = False) -> bool:
        """True when the context path `rel` (slash-separated) is ignored.

        `ancestors_kept` says every folder above `rel` was tested and kept (as in a walk).
        """
        name = rel.lower()
        if ancestors_kept and self._any is not None:
            return self._any.match(name) is not None
        parents = name.split("/")[:-1]
        excluded = False
        for exception, depth, regex in self._rules:
            hit = regex.match(name) is not None
            if not hit and parents and depth <= len(parents):
                hit = regex.match("/".join(parents[:depth])) is not None
            if hit:
                excluded = not exception
        return excluded

    def reincludes_under(self, folder: str) -> bool:
        """True when a `!pattern` may bring back something inside the excluded `folder`."""
        return any(p.startswith(folder) for p in self._exceptions)


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


class FileHasher:
    """Hashes files with as few system calls and allocations as it can: most context files are
    small, so per-file costs (a buffer, a hasher object, an extra read to find EOF) would
    otherwise outweigh hashing. `new` is the hash (xxh3_128; the benchmark passes sha256 to
    compare like with like)."""

    def __init__(self, new: Callable[..., _Hash] = xxhash.xxh3_128) -> None:
        self._new = new
        self._buffer = bytearray(_CHUNK)
        self._view = memoryview(self._buffer)

    def hash(self, path: str | os.PathLike[str], size: int) -> str:
        """Hash of the first `size` bytes (the size lstat gave: what Docker's tar sends)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size <= _CHUNK:  # one read, one-shot hash: the common case
                data = os.read(fd, size)
                self._check(len(data), size, path)
                return self._new(data).hexdigest()
            digest = self._new()
            remaining = size
            while remaining > 0:
                n = os.readv(fd, [self._view[: min(remaining, _CHUNK)]])
                self._check(n, min(remaining, 1), path)
                digest.update(self._view[:n])
                remaining -= n
            return digest.hexdigest()
        finally:
            os.close(fd)

    @staticmethod
    def _check(got: int, wanted: int, path: str | os.PathLike[str]) -> None:
        if got < wanted:
            raise SpecError(f"file shrank while it was hashed: {os.fspath(path)!r}")


def _walk(
    children: Callable[[str], Iterable[tuple[str, bool, _T]]],
    docker: DockerIgnore | None,
    aml: pathspec.GitIgnoreSpec | None,
) -> Iterator[tuple[str, _T]]:
    """The context's entries, as docker-py's PatternMatcher.walk chooses them, with `.amlignore`
    applied first (Azure ML never uploads what it ignores, so nothing under an ignored folder
    can come back). `children(folder)` lists a folder ('' is the root): each entry's name,
    whether it is a folder (not a link to one), and what to yield with its path."""
    stack = [("", True)]
    while stack:
        folder, kept = stack.pop()  # kept: no folder above was excluded
        prefix = folder + "/" if folder else ""
        for name, is_dir, item in children(folder):
            rel = prefix + name
            if aml is not None and aml.match_file(rel + "/" if is_dir else rel):
                continue
            excluded = docker is not None and docker.excludes(rel, ancestors_kept=kept)
            if not excluded:
                yield rel, item
            if is_dir and (not excluded or docker is None or docker.reincludes_under(rel)):
                stack.append((rel, kept and not excluded))


def _ignore_lines(path: Path) -> list[str]:
    """Pattern lines of an ignore file, as docker-py reads `.dockerignore` (no comments, blanks)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read ignore file: {exc}", source=str(path)) from None
    return _pattern_lines(text)


def _pattern_lines(text: str | None) -> list[str]:
    if text is None:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def copy_context(context: ContextManifest, target: Path) -> None:
    """Copy the entries of `context` into `target` and check every file against its hash.

    Copies, not links: a file edited during the build must not change what is built after the
    key was computed. No copy is setuid, setgid or sticky (the image gets the manifest's modes
    from the archive the builder sends). Raises SpecError when a file no longer matches.
    """
    if context.root is None:
        raise SpecError("the spec's build context has no folder to copy from")
    root = Path(context.root)
    hasher = FileHasher()
    for entry in context.entries:
        source, dest = root / entry.path, target / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            dest.mkdir(exist_ok=True)
            os.chmod(dest, entry.mode & 0o777)
        elif entry.kind == "symlink":
            os.symlink(entry.digest, dest)
        else:
            shutil.copyfile(source, dest)
            os.chmod(dest, entry.mode & 0o777)
            if hasher.hash(dest, dest.stat().st_size) != entry.digest:
                raise SpecError(
                    f"{entry.path} changed after the spec was hashed; resolve again",
                    source=str(root),
                )
