"""Deterministic OCI layers: a folder's tree as a gzipped tar whose bytes depend on the tree's
names, modes, link targets and contents only.

The same tree gives the same blob on every host, whatever its files' owners, times or the order
the filesystem lists them in: entries are sorted by name (byte order), every entry has owner
0:0 with no user or group names, one fixed time (`SOURCE_DATE_EPOCH`) and PAX format; the gzip
header has no name and no time, and the deflate stream has one fixed level. So a layer can be
cached and shared by digest: two environments that hold the same package send it once.

Trees under `prefix` (a path in the image, say `opt/envctl/env`) get the prefix's folders as
their first entries, so each layer stands alone. The blob is written to a file as it is made:
memory stays bounded whatever the tree's size.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from builder.errors import LayerError

# 1980-01-01T00:00:00Z: the oldest time a zip (a wheel) can hold, and no "unset" 0 for the
# tools that read one as such; every entry has it
SOURCE_DATE_EPOCH = 315532800
GZIP_LEVEL = 1  # the fastest level: compression must not be a build's bottleneck
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_FOLDER_MODE = 0o755
MAX_DEPTH = 128  # folders deep; no package tree comes near it, a hostile one may
# a gzip header without name or time (RFC 1952): deflate, no flags, mtime 0, XFL 0, OS 255
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass(frozen=True)
class Layer:
    """A written layer blob: `digest` of the gzipped bytes at `path`, `diff_id` of the tar."""

    path: Path
    digest: str
    diff_id: str
    size: int
    media_type: str = LAYER_GZIP


def write_layer(
    root: Path, out: Path, *, prefix: str = "", leave_out: Collection[str] = ()
) -> Layer:
    """Write the tree under `root` as a layer to `out` (its entries under `prefix`, a relative
    POSIX path in the image); the layer. `leave_out` names top-level entries of `root` that are
    not part of it. `out` is replaced only once it is whole."""
    return _written(out, _entries(root, prefix.strip("/"), frozenset(leave_out)))


def merge_layers(parts: Sequence[Iterator[bytes]], out: Path) -> Layer:
    """One layer holding the entries of `parts` (gzipped layer blobs as chunks), in order, each
    folder once: what a stack of those layers would show, as one layer. The parts are streamed,
    never held whole."""
    return _written(out, _merged(parts))


def _written(out: Path, entries: Iterable[tuple[tarfile.TarInfo, IO[bytes] | None]]) -> Layer:
    """Write `entries` as a gzipped PAX tar to `out`, whole or not at all."""
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as raw:
            sink = _GzipSink(raw)
            tar_file = cast(IO[bytes], sink)  # tarfile writes and tells, nothing more
            with tarfile.TarFile(fileobj=tar_file, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for info, source in entries:
                    try:
                        tar.addfile(info, source)
                    finally:
                        if source is not None:
                            source.close()
                    _forget(tar)  # written: a long tree must not grow a member list
            sink.finish()
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Layer(out, sink.digest, sink.diff_id, sink.size)


def _entries(
    root: Path, prefix: str, leave_out: frozenset[str]
) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """The tar entries of `root` under `prefix`, parents first, each folder's names sorted;
    walked without recursion and without following a symlink."""
    parts = prefix.split("/") if prefix else []
    for n in range(1, len(parts) + 1):
        yield _folder("/".join(parts[:n])), None
    top = [child for child in _listing(os.fspath(root)) if child.name not in leave_out]
    # one frame per open folder: its name in the layer and the children still to write
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [(prefix, iter(top))]
    while stack:
        name, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        path = f"{name}/{child.name}" if name else child.name
        if child.name.startswith(".wh."):
            raise LayerError(f"{child.path}: a .wh. name deletes files of the layers below")
        st = child.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            info = _info(path, tarfile.SYMTYPE, 0o777)
            info.linkname = os.readlink(child.path)
            yield info, None
        elif stat.S_ISDIR(st.st_mode):
            yield _folder(path), None
            if len(stack) >= MAX_DEPTH:
                raise LayerError(f"{child.path}: more than {MAX_DEPTH} folders deep")
            stack.append((path, iter(_listing(child.path))))
        elif stat.S_ISREG(st.st_mode):
            info = _info(path, tarfile.REGTYPE, _mode(st.st_mode))
            info.size = st.st_size
            yield info, open(child.path, "rb")  # noqa: SIM115  (closed once written)
        else:
            raise LayerError(f"{child.path}: not a file, folder or symlink; a layer cannot hold it")


def _listing(folder: str) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as listing:
        return sorted(listing, key=lambda entry: os.fsencode(entry.name))


def _forget(tar: tarfile.TarFile) -> None:
    """Drop the member list TarFile keeps of every entry it wrote or read (a 45,000-file layer
    would hold them all): the walk has them in order already."""
    tar.members.clear()  # type: ignore[attr-defined]  # the attribute the stubs leave out


def _mode(st_mode: int) -> int:
    """A file's mode in a layer: 0755 when anyone may run it, else 0644. Nothing else of the
    host's modes (umask, setuid) reaches an image."""
    return 0o755 if st_mode & 0o111 else 0o644


def _merged(
    parts: Sequence[Iterator[bytes]],
) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """The entries of gzipped layer streams, in order, each folder once."""
    folders: set[str] = set()
    for chunks in parts:
        reader = ChunkReader(chunks)
        with (
            gzip.GzipFile(fileobj=cast(IO[bytes], reader), mode="rb") as plain,
            tarfile.open(fileobj=plain, mode="r|") as tar,
        ):
            for member in tar:
                if member.isdir():
                    if member.name in folders:
                        continue
                    folders.add(member.name)
                elif not (member.isfile() or member.issym()):
                    raise LayerError(f"{member.name}: a merged layer holds files, folders, links")
                info = _info(member.name, member.type, member.mode)
                info.linkname, info.size = member.linkname, member.size
                yield info, tar.extractfile(member) if member.isfile() else None
                _forget(tar)
        reader.drain()  # to its end: whoever sends the chunks checks them there


class ChunkReader:
    """A readable file over an iterator of byte chunks (a blob as a registry or cache sends it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read what is left, unused."""
        self._buffer = b""
        for _ in self._chunks:
            pass


def _folder(name: str) -> tarfile.TarInfo:
    return _info(name, tarfile.DIRTYPE, _FOLDER_MODE)


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = SOURCE_DATE_EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _GzipSink:
    """A write-only file that gzips what it gets into `raw` and hashes both streams."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._tar = hashlib.sha256()
        self._blob = hashlib.sha256()
        self._crc = 0
        self._length = 0
        self.size = 0
        self._out(_GZIP_HEADER)

    def write(self, data: bytes) -> int:
        self._tar.update(data)
        self._crc = zlib.crc32(data, self._crc)
        self._length += len(data)
        self._out(self._deflate.compress(data))
        return len(data)

    def tell(self) -> int:
        return self._length

    def finish(self) -> None:
        self._out(self._deflate.flush())
        self._out(struct.pack("<II", self._crc, self._length & 0xFFFFFFFF))

    @property
    def digest(self) -> str:
        return f"sha256:{self._blob.hexdigest()}"

    @property
    def diff_id(self) -> str:
        return f"sha256:{self._tar.hexdigest()}"

    def _out(self, data: bytes) -> None:
        if data:
            self._raw.write(data)
            self._blob.update(data)
            self.size += len(data)
