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

import hashlib
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Iterator
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


def write_layer(root: Path, out: Path, *, prefix: str = "") -> Layer:
    """Write the tree under `root` as a layer to `out` (its entries under `prefix`, a relative
    POSIX path in the image); the layer. `out` is replaced only once it is whole."""
    prefix = prefix.strip("/")
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as raw:
            sink = _GzipSink(raw)
            tar_file = cast(IO[bytes], sink)  # tarfile writes and tells, nothing more
            with tarfile.TarFile(fileobj=tar_file, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for info, source in _entries(root, prefix):
                    tar.addfile(info, source)
                    if source is not None:
                        source.close()
            sink.finish()
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Layer(out, sink.digest, sink.diff_id, sink.size)


def _entries(root: Path, prefix: str) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """The tar entries of `root` under `prefix`, parents first, each folder's names sorted."""
    parts = prefix.split("/") if prefix else []
    for n in range(1, len(parts) + 1):
        yield _folder("/".join(parts[:n]), _FOLDER_MODE), None
    yield from _tree(root, prefix)


def _tree(folder: Path, name: str) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    with os.scandir(folder) as listing:
        children = sorted(listing, key=lambda entry: os.fsencode(entry.name))
    for child in children:
        path = f"{name}/{child.name}" if name else child.name
        st = child.stat(follow_symlinks=False)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            info = _info(path, tarfile.SYMTYPE, 0o777)
            info.linkname = os.readlink(child.path)
            yield info, None
        elif stat.S_ISDIR(st.st_mode):
            yield _folder(path, mode), None
            yield from _tree(Path(child.path), path)
        elif stat.S_ISREG(st.st_mode):
            info = _info(path, tarfile.REGTYPE, mode)
            info.size = st.st_size
            yield info, open(child.path, "rb")  # noqa: SIM115  (closed once written)
        else:
            raise LayerError(f"{child.path}: not a file, folder or symlink; a layer cannot hold it")


def _folder(name: str, mode: int) -> tarfile.TarInfo:
    return _info(name, tarfile.DIRTYPE, mode)


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
