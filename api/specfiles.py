"""Reading spec files from disk: the I/O edge in front of the pure `hashing` package.

A spec file may name other files: a conda environment, an Azure ML build context and its
Dockerfile. This module reads them, walks build contexts (honouring `.dockerignore` with Docker's
own matcher, and `.amlignore` with gitignore rules as Azure ML does) and hands contents to
`hashing`, so every error still names the file, line and field it is about.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pathspec
import xxhash
from docker.utils.build import PatternMatcher

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


def scan_context(root: str | os.PathLike[str]) -> ContextManifest:
    """List a build context as Docker would send it: relative path, kind, mode, content hash."""
    root = Path(root)
    docker_patterns = _ignore_lines(root / ".dockerignore")
    included = set(_ContextMatcher(docker_patterns).walk(str(root)))
    aml_lines = _ignore_lines(root / ".amlignore")
    if aml_lines:
        aml = pathspec.GitIgnoreSpec.from_lines(aml_lines)
        included = {p for p in included if not _aml_ignored(aml, root, p)}
    entries = []
    for rel in sorted(included):
        full = root / rel
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        posix = Path(rel).as_posix()
        if stat.S_ISLNK(st.st_mode):
            entries.append(ContextEntry(posix, "symlink", mode, os.readlink(full)))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(ContextEntry(posix, "dir", mode))
        elif stat.S_ISREG(st.st_mode):
            entries.append(ContextEntry(posix, "file", mode, hash_file(full)))
        # sockets, fifos and devices cannot be sent in a build context: Docker skips them too
    return ContextManifest(tuple(entries), root=str(root))


class _ContextMatcher(PatternMatcher):
    """docker-py's `.dockerignore` matcher, minus its re-inclusion of `.dockerignore` itself.

    docker-py always sends `.dockerignore` so the daemon can read it; the daemon then deletes it
    (and the Dockerfile) from the context when the patterns exclude it, so no COPY can see it.
    """

    def __init__(self, patterns: list[str]) -> None:
        super().__init__(patterns)
        last = self.patterns[-1] if self.patterns else None
        if last is not None and last.exclusion and last.cleaned_pattern == ".dockerignore":
            self.patterns.pop()


def hash_file(path: str | os.PathLike[str]) -> str:
    """xxh3_128 of a file's bytes, read in 1 MiB chunks into one reused buffer."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _aml_ignored(spec: pathspec.GitIgnoreSpec, root: Path, rel: str) -> bool:
    posix = Path(rel).as_posix()
    if (root / rel).is_dir() and not (root / rel).is_symlink():
        posix += "/"
    # a file inside an ignored directory is ignored too
    parts = posix.rstrip("/").split("/")
    return any(spec.match_file("/".join(parts[:i]) + "/") for i in range(1, len(parts))) or (
        spec.match_file(posix)
    )


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
