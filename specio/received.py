"""A resolve request as the service receives it (`specio.request` is how a client makes one):
stored and restored around the build store, read in memory (`RequestFiles`, checked path by
path) as `load_spec` reads the client's disk, and a build's context written from it with no
setuid, setgid or sticky bit on the host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import xxhash

from hashing import (
    ContextEntry,
    ContextManifest,
    EnvironmentSpec,
    FileRef,
    ImageName,
    SpecError,
    parse_image_at,
)
from specio.context import list_tree
from specio.files import MAX_LINKS, end_of_links, names_folder, read_spec_parts, relative_path
from specio.request import ResolveRequest, SpecFile

# A tenant's files on the host never carry setuid, setgid or sticky bits: the image gets the
# modes the manifest lists (builder.docker's archive sets them), the host only these bits.
_HOST_MODE = 0o777


# Request paths are written under a build's folder, whose own path must fit in the kernel's
# 4,096 bytes beside them; a link target may be as long as the kernel allows.
MAX_PATH = 1024


MAX_TARGET = 4095


def stored_request(request: ResolveRequest) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The request as a build row keeps it, each file's bytes replaced by their sha256, and
    those bytes by sha256 (the store keeps each once, however many builds send it). The
    request was read already: its files are base64."""
    body = request.model_dump(mode="json")
    files: dict[str, bytes] = {}
    for file in body["files"]:
        if file["kind"] == "file":
            data = base64.b64decode(file.pop("content"))
            file["sha256"] = sha = hashlib.sha256(data).hexdigest()
            files[sha] = data
    return body, files


def restored_request(body: dict[str, Any], files: Mapping[str, bytes]) -> ResolveRequest:
    """The request `stored_request` gave `body` of, its files' bytes from `files`; a KeyError
    names a file that is not there."""
    body = {**body, "files": [dict(file) for file in body["files"]]}
    for file in body["files"]:
        if "sha256" in file:
            file["content"] = base64.b64encode(files[file.pop("sha256")]).decode("ascii")
    return ResolveRequest.model_validate(body)


def spec_from_request(
    request: ResolveRequest, *, default_base: ImageName | None, context_dir: Path | None = None
) -> EnvironmentSpec:
    """The EnvironmentSpec `load_spec` gives for the original file (the same key), base image not
    yet resolved. Nothing touches the disk, unless `context_dir` (a folder that does not exist
    yet) is given: the build context is then written there, to build from."""
    base = default_base
    if request.base_image is not None:
        base = parse_image_at(request.base_image, "base_image")
    files = RequestFiles(request, context_dir)
    return read_spec_parts(files, format=files.format).complete(base)


@dataclass(frozen=True)
class _Sent:
    """A request's file, checked and decoded."""

    index: int
    kind: Literal["file", "dir", "symlink"]
    mode: int
    data: bytes = b""
    digest: str = ""  # as in a ContextEntry: xxh3_128 of a file's bytes, a symlink's target

    def at(self, attribute: str) -> str:
        """The request field an error about this file is in."""
        return f"files[{self.index}].{attribute}"


class RequestFiles:
    """`SpecFiles` that reads a spec and the files it names from a ResolveRequest."""

    def __init__(self, request: ResolveRequest, context_dir: Path | None = None) -> None:
        name = request.name
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise SpecError(f"not a plain file name: {name!r}", source="name")
        self.spec_source = name
        self.format = request.format
        if isinstance(request.spec, str):
            self._text = request.spec.removeprefix("\ufeff")  # as reading with utf-8-sig does
        else:
            if request.format not in (None, "envctl"):
                raise SpecError("a spec sent as an object is in the envctl format", source="format")
            self.format = "envctl"
            try:  # indented, so that every field has a line of its own in errors
                self._text = json.dumps(request.spec, indent=2, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise SpecError(f"not a JSON object: {exc}", source="spec") from None
        self._sent = _check_files(request.files)
        self._context_dir = context_dir

    def spec_text(self) -> str:
        """The spec's text."""
        return self._text

    def _link_of(self, path: str) -> str | None:
        sent = self._sent.get(path)
        return sent.digest if sent is not None and sent.kind == "symlink" else None  # its target

    def read_text(self, ref: FileRef, within: FileRef | None = None) -> tuple[str, str]:
        """The text of the file `ref` names, following symlinks among the request's files."""
        path = end_of_links(relative_path(ref, within), self._link_of, ref, ", outside the request")
        sent = self._sent.get(path)
        if sent is None:
            raise ref.error(f"file not found: {path!r} is not among the request's files")
        if sent.kind != "file":
            raise ref.error(f"is a {sent.kind}, not a file: {path!r}")
        try:
            return sent.data.decode("utf-8-sig"), path
        except UnicodeDecodeError as exc:
            message = f"not UTF-8 text: {path!r} ({exc.reason} at byte {exc.start})"
            raise ref.error(message) from None

    def check_folder(self, ref: FileRef) -> None:
        """Raise a SpecError at `ref` unless the request sends the folder it names."""
        path = relative_path(ref)
        if not names_folder(path):
            return  # the spec's folder or one above it: they exist
        sent = self._sent.get(path)
        if sent is None or sent.kind != "dir":
            raise ref.error(f"build context {path!r} is not a directory among the request's files")

    def scan(self, ref: FileRef) -> ContextManifest:
        """List the context `ref` names as `scan_context` would once it was written, and write
        it to the context folder if there is one."""
        folder = relative_path(ref)
        inside = _inside(self._sent, folder)
        manifest = _list(inside, folder)
        if self._context_dir is not None:
            _write_atomically({e.path: inside[e.path] for e in manifest.entries}, self._context_dir)
            manifest = replace(manifest, root=str(self._context_dir))
        return manifest


def _check_files(files: list[SpecFile]) -> dict[str, _Sent]:
    """The request's files by path, each checked; a SpecError naming the field otherwise."""
    sent: dict[str, _Sent] = {}
    for index, file in enumerate(files):
        where = f"files[{index}]"
        problem = _path_problem(file.path)
        if problem is not None:
            raise SpecError(problem, source=f"{where}.path")
        if file.path in sent:
            raise SpecError(f"also files[{sent[file.path].index}]", source=f"{where}.path")
        if not 0 <= file.mode <= 0o7777:
            raise SpecError(f"{file.mode} is not 0 to 0o7777", source=f"{where}.mode")
        if file.content and file.kind != "file":
            raise SpecError(f"a {file.kind} has no content", source=f"{where}.content")
        if (file.kind == "symlink") != bool(file.target):
            raise SpecError("a symlink, and only a symlink, has a target", source=f"{where}.target")
        try:
            target_size = len(file.target.encode())
        except UnicodeEncodeError:
            target_size = -1  # a lone surrogate: no file system holds it
        if target_size < 0 or "\0" in file.target:
            raise SpecError(f"not a link target: {file.target[:80]!r}", source=f"{where}.target")
        if target_size > MAX_TARGET:
            message = f"a symlink target of {target_size} bytes: at most {MAX_TARGET}"
            raise SpecError(message, source=f"{where}.target")
        if file.kind == "symlink" and file.mode != 0o777:
            raise SpecError(
                f"a symlink's mode is 0o777, not {file.mode:#o}", source=f"{where}.mode"
            )
        if file.kind == "file":
            try:
                data = base64.b64decode(file.content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SpecError(f"not base64: {exc}", source=f"{where}.content") from None
            entry = _Sent(index, "file", file.mode, data, xxhash.xxh3_128_hexdigest(data))
        else:
            entry = _Sent(index, file.kind, file.mode, digest=file.target)
        sent[file.path] = entry
    for path, entry in sent.items():
        # a file under a symlink would be written wherever the link points
        parts = path.split("/")
        for end in range(1, len(parts)):
            folder = sent.get("/".join(parts[:end]))
            if folder is not None and folder.kind != "dir":
                message = f"inside files[{folder.index}], which is a {folder.kind}"
                raise SpecError(message, source=entry.at("path"))
    return sent


def _path_problem(path: str) -> str | None:
    """What is wrong with a request path, if anything."""
    if not path:
        return "empty path"
    try:
        path.encode()  # lone surrogates cannot be file names
    except UnicodeEncodeError:
        return f"not a file name: {path!r}"
    if "\0" in path or any(len(part.encode()) > 255 for part in path.split("/")):
        return f"not a file name: {path[:80]!r}{'…' if len(path) > 80 else ''}"
    if len(path.encode()) > MAX_PATH:
        size = len(path.encode())
        return f"a path of {size} bytes: at most {MAX_PATH} (it is written on the builder)"
    if path.startswith("/"):
        return f"absolute path {path!r}: paths are relative to the spec file's folder"
    named = False
    for part in path.split("/"):
        if part in ("", "."):
            return f"empty or '.' segment in {path!r}"
        if part != "..":
            named = True
        elif named:
            return f"'..' after a folder name in {path!r}"
    return None


def _inside(sent: dict[str, _Sent], folder: str) -> dict[str, _Sent]:
    """The entries under `folder`, by their path in it; a SpecError for a symlink leading out."""
    inside: dict[str, _Sent] = {}
    for path, entry in sent.items():
        rel = _relative(path, folder)
        if rel is not None:
            inside[rel] = entry
    for rel, entry in inside.items():
        if entry.kind == "symlink" and _escapes(rel, inside):
            message = f"symlink {rel!r} -> {entry.digest!r} points outside the build context"
            raise SpecError(message, source=entry.at("target"))
    return inside


def _list(inside: dict[str, _Sent], folder: str) -> ContextManifest:
    """What `scan_context` lists once `inside` is written: the same ignore rules, and a folder
    that holds entries but was not sent is listed, and is the request's error."""
    tree: dict[str, ContextEntry | None] = {}
    for rel, e in inside.items():
        tree[rel] = ContextEntry(rel, e.kind, e.mode, e.digest)
        parent = rel.rpartition("/")[0]
        while parent and parent not in tree:
            tree[parent] = None
            parent = parent.rpartition("/")[0]
    texts = (_ignore_text(inside, name, folder) for name in (".dockerignore", ".amlignore"))
    manifest, unlisted = list_tree(tree, *texts)
    if unlisted:
        where = posixpath.join(folder, unlisted[0])
        message = f"{where!r} is in the build context but not among the request's files"
        raise SpecError(message, source="files")
    return manifest


def _ignore_text(inside: dict[str, _Sent], name: str, folder: str) -> str | None:
    """An ignore file's text as reading it on disk would give it; None when there is none."""
    path = name
    for _ in range(MAX_LINKS):  # _inside saw to it that every link stays inside
        entry = inside.get(path)
        if entry is None or entry.kind != "symlink":
            break
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), entry.digest))
    if entry is None:
        return None  # a missing file, or a link to nothing: no patterns, as on disk
    source = entry.at("content")
    if entry.kind != "file":
        raise SpecError(f"cannot read ignore file {posixpath.join(folder, name)!r}: a {entry.kind}",
                        source=source)  # fmt: skip
    try:
        return entry.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read ignore file: {exc}", source=source) from None


def _relative(path: str, folder: str) -> str | None:
    """`path` relative to `folder`, when it is inside it (both request paths)."""
    if folder:
        if not path.startswith(folder + "/"):
            return None
        path = path[len(folder) + 1 :]
    return None if path.split("/", 1)[0] == ".." else path


def _escapes(link: str, inside: dict[str, _Sent]) -> bool:
    """True when following the symlink `link` leaves the context, hop by hop as the kernel
    would follow it (a chain of links that each stay inside may still lead out)."""
    current = link.split("/")[:-1]  # its folders are real folders: _check_files sees to it
    target = inside[link].digest
    pending: list[str] = []
    for _ in range(MAX_LINKS):
        if target.startswith("/"):
            return True
        pending = target.split("/") + pending
        while pending:
            part = pending.pop(0)
            if part == "..":
                if not current:
                    return True
                current.pop()
            elif part not in ("", "."):
                current.append(part)
                entry = inside.get("/".join(current))
                if entry is not None and entry.kind == "symlink":
                    current.pop()
                    target = entry.digest
                    break
        else:
            return False
    return True  # a loop of links, or too long a chain


def _write_atomically(inside: dict[str, _Sent], root: Path) -> None:
    """Write a context into a temporary sibling of `root`, then rename it into place, so a
    reader never sees half a context."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_tree(inside, tmp)
        os.rename(tmp, root)
    except BaseException:
        remove_context(tmp)
        raise


def _write_tree(inside: dict[str, _Sent], root: Path) -> None:
    """Files first, then symlinks (so nothing is written through one), then folder modes
    deepest first (so a read-only folder is filled before it becomes read-only)."""
    for rel in sorted(inside):  # a folder sorts before what it holds
        entry, path = inside[rel], root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            path.mkdir(mode=0o700, exist_ok=True)
        elif entry.kind == "file":
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
                out.write(entry.data)
            os.chmod(path, entry.mode & _HOST_MODE)
    for rel, entry in inside.items():
        if entry.kind == "symlink":
            os.symlink(entry.digest, root / rel)
    for rel in sorted((r for r, e in inside.items() if e.kind == "dir"), reverse=True):
        os.chmod(root / rel, inside[rel].mode & _HOST_MODE)


def remove_context(tmp: Path) -> None:
    """Delete a written context, read-only folders included."""
    for folder, dirs, _ in os.walk(tmp):
        for name in dirs:  # before the walk lists them; never through a symlink
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(tmp, ignore_errors=True)
