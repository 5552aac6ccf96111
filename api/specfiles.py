"""Reading spec files from disk: the I/O edge in front of the pure `hashing` package.

A spec file may name other files: a conda environment, an Azure ML build context and its
Dockerfile. This module reads them, walks build contexts (honouring `.dockerignore` with Docker's
own matcher, and `.amlignore` with gitignore rules as Azure ML does) and hands contents to
`hashing`, so every error still names the file, line and field it is about.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path
from typing import Protocol

import pathspec
import xxhash
from docker.utils import fnmatch as docker_fnmatch
from docker.utils.build import Pattern

from hashing import (
    ContextEntry,
    ContextManifest,
    EnvironmentSpec,
    FileRef,
    ImageName,
    SpecError,
    SpecFormat,
    complete_spec,
    parse_conda_text,
    parse_dockerfile,
    parse_spec_text,
)

_CHUNK = 1 << 20
_by_path = attrgetter("path")


def load_spec(
    path: str | os.PathLike[str],
    *,
    format: SpecFormat | None = None,
    default_base: ImageName | None = None,
) -> EnvironmentSpec:
    """Read a spec file and every file it names into an EnvironmentSpec (base not yet resolved)."""
    spec_path = Path(path)
    draft = parse_spec_text(_read_text(spec_path, None), str(spec_path), format=format)
    folder = spec_path.parent
    conda = None
    if draft.conda_file is not None:
        conda_path = folder / draft.conda_file.path
        conda = parse_conda_text(_read_text(conda_path, draft.conda_file), str(conda_path))
    dockerfile = context = None
    if draft.context is not None:
        root = folder / draft.context.path
        if not root.is_dir():
            raise draft.context.error(f"build context {str(root)!r} is not a directory")
        if draft.dockerfile is not None:
            dockerfile_path = root / draft.dockerfile.path
            text = _read_text(dockerfile_path, draft.dockerfile)
            dockerfile = parse_dockerfile(text, str(dockerfile_path))
        context = scan_context(root)
    return complete_spec(
        draft, conda=conda, dockerfile=dockerfile, context=context, default_base=default_base
    )


def scan_context(
    root: str | os.PathLike[str], *, hasher: FileHasher | None = None
) -> ContextManifest:
    """List a build context as Docker would send it: relative path, kind, mode, content hash.

    Keys are defined with the default hasher (xxh3_128); `hasher` lets a benchmark run the
    same walk and I/O with another hash.
    """
    root = Path(root)
    docker_patterns = _ignore_lines(root / ".dockerignore")
    docker = DockerIgnore(docker_patterns) if docker_patterns else None
    aml_lines = _ignore_lines(root / ".amlignore")
    aml = pathspec.GitIgnoreSpec.from_lines(aml_lines) if aml_lines else None
    hasher = hasher or FileHasher()
    entries = []
    for rel, entry in _walk(str(root), docker, aml):
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


def hash_file(path: str | os.PathLike[str]) -> str:
    """xxh3_128 of a file's bytes."""
    return FileHasher().hash(path, os.stat(path).st_size)


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
    root: str, docker: DockerIgnore | None, aml: pathspec.GitIgnoreSpec | None
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """The context's entries, as docker-py's PatternMatcher.walk chooses them, with `.amlignore`
    applied first (Azure ML never uploads what it ignores, so nothing under an ignored folder
    can come back)."""
    stack = [("", root, True)]
    while stack:
        prefix, folder, kept = stack.pop()  # kept: no folder above was excluded
        with os.scandir(folder) as it:
            for entry in it:
                rel = prefix + entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if aml is not None and aml.match_file(rel + "/" if is_dir else rel):
                    continue
                excluded = docker is not None and docker.excludes(rel, ancestors_kept=kept)
                if not excluded:
                    yield rel, entry
                if is_dir and (not excluded or docker is None or docker.reincludes_under(rel)):
                    stack.append((rel + "/", entry.path, kept and not excluded))


def _ignore_lines(path: Path) -> list[str]:
    """Pattern lines of an ignore file, as docker-py reads `.dockerignore` (no comments, blanks)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read ignore file: {exc}", source=str(path)) from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _read_text(path: Path, named_by: FileRef | None) -> str:
    """A text file's content; a SpecError pointing at whoever named it when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
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
