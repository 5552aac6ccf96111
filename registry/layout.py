"""`LayoutRegistry`: an OCI image layout folder as a registry, envctl's embedded default.

The folder follows the OCI image layout spec, so skopeo, oras and containerd read it as is
(`skopeo copy oci:PATH:TAG docker-daemon:NAME:TAG`):

    PATH/oci-layout          {"imageLayoutVersion": "1.0.0"}
    PATH/index.json          an OCI index; a tag is an entry with annotation `…image.ref.name`
    PATH/blobs/sha256/HEX    every blob and every manifest, named by its sha256

Manifests put by digest only (the children of a multi-platform index) get an entry without
`ref.name`, as skopeo writes them, so their media type is known without reading them.

Several processes may write one layout. Blobs are content-addressed and land by `rename`, so two
writers of one blob write the same bytes. index.json changes are read-modify-write under an
exclusive `flock` on `PATH/.envctl.lock` and land by `rename` too, so a reader, which takes no
lock, sees the old index or the new one, never half of one. Temporary files are `PATH/.tmp-*`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from registry.base import MANIFEST_TYPES, OCI_INDEX, Descriptor, Manifest
from registry.errors import ImageNotFound, RegistryError
from registry.store import StoreRegistry, VerifiedStream

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
LOCK_FILE = ".envctl.lock"
TEMP_PREFIX = ".tmp-"

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # the distribution spec's tag grammar
_CHUNK = 1 << 20
# Distribution refuses manifests over 4 MiB; a bigger blob is a layer, not worth reading as one.
_MAX_MANIFEST = 4 << 20

Entries = list[dict[str, Any]]


class LayoutRegistry(StoreRegistry):
    """An OCI image layout at `path`. A missing folder is an empty registry; it is created on
    the first write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        # Absolute, so the `oci:PATH:TAG` references we hand out mean the same from any cwd.
        self.path = Path(path).absolute()

    @property
    def address(self) -> str:
        """`oci:PATH`."""
        return f"oci:{self.path}"

    def reference(self, tag: str) -> str:
        """`oci:PATH:TAG` as skopeo's oci: transport spells it; `oci:PATH@sha256:…` for a digest."""
        return f"{self.address}@{tag}" if _is_digest(tag) else f"{self.address}:{tag}"

    # -- manifests -------------------------------------------------------------------------------

    def resolve(self, reference: str) -> Descriptor | None:
        """The index.json entry of a tag or digest; for a digest without an entry, the blob's
        own `mediaType` if it is a manifest. None when absent."""
        entries: Entries = self._read_index()["manifests"]
        if _is_digest(reference):
            entry = next((e for e in entries if e["digest"] == reference), None)
        else:
            entry = next((e for e in entries if _tag_of(e) == reference), None)
            if entry is None:
                return None
        if entry is not None and entry.get("mediaType") in MANIFEST_TYPES:
            return Descriptor.from_json(entry)
        # An entry without a usable media type (other tools write those) or a manifest that
        # only an index names: the manifest's own `mediaType` field says what it is.
        found = self._sniff_manifest(reference if entry is None else entry["digest"])
        if found is None and entry is not None:  # errors are never misses
            raise RegistryError(
                f"index.json points {reference} at {entry['digest']}, which is not a manifest",
                endpoint=self.reference(reference),
            )
        return found

    def get_manifest(self, reference: str) -> Manifest | None:
        """The manifest a tag or digest points to, or None. A tag whose manifest blob is
        missing is a broken layout and raises."""
        descriptor = self.resolve(reference)
        if descriptor is None:
            return None
        with self.read_blob(descriptor) as chunks:
            return Manifest(descriptor.media_type, b"".join(chunks))

    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        """Write the manifest blob, then point `reference` (a tag, or the manifest's own digest)
        at it in index.json. Refused unless every blob the manifest names is here."""
        if _is_digest(reference):
            if reference != manifest.digest:
                raise RegistryError(
                    f"manifest digest is {manifest.digest}, not {reference}",
                    endpoint=self.reference(reference),
                )
            tag = None
        elif _TAG.fullmatch(reference):
            tag = reference
        else:
            raise RegistryError(f"invalid tag {reference!r}", endpoint=self.address)
        try:
            children = manifest.references()
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"manifest {manifest.digest} is not a valid {manifest.media_type} ({exc!r})",
                endpoint=self.reference(reference),
            ) from exc
        missing = sorted({c.digest for c in children if not self.has_blob(c.digest)})
        if missing:
            raise RegistryError(
                f"manifest names blobs that are not in the layout: {', '.join(missing)}",
                endpoint=self.reference(reference),
            )
        descriptor = manifest.descriptor
        if not self.has_blob(descriptor.digest):
            self.put_blob(descriptor, iter((manifest.data,)))
        entry = descriptor.as_json()

        def change(entries: Entries) -> Entries | None:
            if tag is None:
                if any(e["digest"] == descriptor.digest for e in entries):
                    return None  # tagged or not, it is known already
                return [*entries, entry]
            # The tag moves here; an untagged entry of the same manifest is now redundant.
            kept = [
                e
                for e in entries
                if _tag_of(e) != tag
                and (_tag_of(e) is not None or e["digest"] != descriptor.digest)
            ]
            return [*kept, {**entry, "annotations": {REF_NAME: tag}}]

        self._update_index(change)

    def tags(self) -> list[str]:
        """Every `ref.name` in index.json, sorted."""
        return sorted(
            {tag for e in self._read_index()["manifests"] if (tag := _tag_of(e)) is not None}
        )

    def delete_tag(self, tag: str) -> None:
        """Drop the tag's index.json entry (idempotent; blobs stay until a GC)."""

        def change(entries: Entries) -> Entries | None:
            kept = [e for e in entries if _tag_of(e) != tag]
            return kept if len(kept) != len(entries) else None

        if tag in self.tags():  # deleting a missing tag must not create the layout
            self._update_index(change)

    # -- blobs -----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """True when `blobs/sha256/HEX` exists."""
        path = self._blob_path(digest)
        with self._io_errors(f"checking blob {digest}"):
            return path.is_file()

    @contextmanager
    def read_blob(self, descriptor: Descriptor) -> Iterator[Iterator[bytes]]:
        """The blob file's bytes, verified against the descriptor as they stream."""
        path = self._blob_path(descriptor.digest)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise ImageNotFound(
                f"blob {descriptor.digest} is not in the layout", endpoint=self.address
            ) from None
        except OSError as exc:
            raise self._error(f"opening blob {descriptor.digest}", exc) from exc
        with file:
            yield iter(VerifiedStream(descriptor, self._chunks(file, descriptor), self.address))

    def put_blob(self, descriptor: Descriptor, chunks: Iterator[bytes]) -> None:
        """Write the chunks to a temporary file while hashing them; rename it into place only
        when digest and size match. On a mismatch, or if `chunks` raises, nothing is left."""
        path = self._blob_path(descriptor.digest)
        self._ensure_layout()
        with self._io_errors("creating a temporary file"):
            fd, name = tempfile.mkstemp(dir=self.path, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = hashlib.sha256(), 0
                for chunk in chunks:  # the source's own errors pass through unchanged
                    digest.update(chunk)
                    size += len(chunk)
                    if size > descriptor.size:
                        raise RegistryError(
                            f"blob {descriptor.digest} is longer than {descriptor.size} bytes",
                            endpoint=self.address,
                        )
                    with self._io_errors(f"writing blob {descriptor.digest}"):
                        out.write(chunk)
                got = "sha256:" + digest.hexdigest()
                if size != descriptor.size or got != descriptor.digest:
                    raise RegistryError(
                        f"blob {descriptor.digest} arrived as {got} ({size} bytes)",
                        endpoint=self.address,
                    )
                with self._io_errors(f"writing blob {descriptor.digest}"):
                    out.flush()
                    os.fsync(out.fileno())
            with self._io_errors(f"storing blob {descriptor.digest}"):
                # Read-only: a mounted blob is one inode in two layouts, so it must never be
                # changed in place, only replaced.
                os.chmod(name, 0o444)
                os.replace(name, path)
                _fsync_dir(path.parent)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(name)
            raise

    def mount_blob(self, descriptor: Descriptor, source: StoreRegistry) -> bool:
        """Hard-link the blob from another layout on the same filesystem. False when `source`
        is not a layout, lacks the blob, or the link is impossible (another filesystem)."""
        if not isinstance(source, LayoutRegistry):
            return False
        target = self._blob_path(descriptor.digest)
        origin = source._blob_path(descriptor.digest)
        try:
            if origin.stat().st_size != descriptor.size:
                return False
        except OSError:
            return False
        # Read it through once, checked: a promotion must never pass on a corrupt blob, and
        # reading still saves the write (and the disk space) that a copy would cost.
        with source.read_blob(descriptor) as chunks:
            for _ in chunks:
                pass
        self._ensure_layout()
        try:
            os.link(origin, target)
        except FileExistsError:
            return True
        except OSError:  # EXDEV, EPERM, EMLINK…: the caller streams, and reports real errors
            return False
        with self._io_errors(f"linking blob {descriptor.digest}"):
            _fsync_dir(target.parent)
        return True

    # -- the files -------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        # The digest becomes a file name: anything but sha256:HEX could leave blobs/.
        if not _is_digest(digest):
            raise RegistryError(f"unsupported digest {digest!r}", endpoint=self.address)
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def _chunks(self, file: BinaryIO, descriptor: Descriptor) -> Iterator[bytes]:
        while True:
            with self._io_errors(f"reading blob {descriptor.digest}"):
                chunk = file.read(_CHUNK)
            if not chunk:
                return
            yield chunk

    def _sniff_manifest(self, digest: str) -> Descriptor | None:
        """A blob as a manifest descriptor, if its JSON names a manifest media type."""
        path = self._blob_path(digest)
        try:
            size = path.stat().st_size
            if size > _MAX_MANIFEST:
                return None
            body = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(f"reading blob {digest}", exc) from exc
        except ValueError:  # not JSON (a layer), or not UTF-8
            return None
        media_type = body.get("mediaType") if isinstance(body, dict) else None
        if media_type not in MANIFEST_TYPES:
            return None
        return Descriptor(str(media_type), digest, size)

    def _read_index(self) -> dict[str, Any]:
        path = self.path / INDEX_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        except OSError as exc:
            raise self._error("reading index.json", exc) from exc
        try:
            index = json.loads(data)
        except ValueError as exc:
            raise RegistryError(
                f"corrupt layout: index.json is not valid JSON ({exc})", endpoint=self.address
            ) from exc
        entries = index.get("manifests", []) if isinstance(index, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict)
            and isinstance(e.get("digest"), str)
            and isinstance(e.get("size"), int)
            for e in entries
        ):
            raise RegistryError(
                "corrupt layout: index.json is not an OCI index (it needs a `manifests` list "
                "of descriptors with digest and size)",
                endpoint=self.address,
            )
        index["manifests"] = entries
        return dict(index)

    def _update_index(self, change: Callable[[Entries], Entries | None]) -> None:
        """Apply `change` to index.json's entries under the layout's lock; None = no change."""
        self._ensure_layout()
        with self._io_errors("locking the layout"):
            lock = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with self._io_errors("locking the layout"):
                fcntl.flock(lock, fcntl.LOCK_EX)
            # Read under the lock: another writer may have changed it since we last looked.
            index = self._read_index()
            entries = change(index["manifests"])
            if entries is not None:
                self._write_file(INDEX_FILE, _json({**index, "manifests": entries}), replace=True)
        finally:
            os.close(lock)  # releases the flock

    def _ensure_layout(self) -> None:
        """Create the folder, `oci-layout` and an empty index.json if missing; check the
        version of an existing `oci-layout`."""
        marker = self.path / LAYOUT_FILE
        try:
            version = json.loads(marker.read_bytes()).get("imageLayoutVersion")
        except FileNotFoundError:
            version = None
        except (OSError, ValueError, AttributeError) as exc:
            raise RegistryError(
                f"unreadable oci-layout file ({exc})", endpoint=self.address
            ) from exc
        if version is not None and version != LAYOUT_VERSION:
            raise RegistryError(
                f"unsupported image layout version {version!r}", endpoint=self.address
            )
        if version is not None and (self.path / INDEX_FILE).exists():
            return
        with self._io_errors("creating the layout"):
            (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        empty_index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        self._write_file(INDEX_FILE, _json(empty_index), replace=False)
        self._write_file(LAYOUT_FILE, _json({"imageLayoutVersion": LAYOUT_VERSION}), replace=False)

    def _write_file(self, name: str, data: bytes, *, replace: bool) -> None:
        """Write a file of the layout atomically: temp, fsync, then rename (`replace`) or
        link, which creates it only if absent, without a lock."""
        with self._io_errors(f"writing {name}"):
            fd, temp = tempfile.mkstemp(dir=self.path, prefix=TEMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(temp, 0o644)  # mkstemp's 0600 would hide it from other users' skopeo
                if replace:
                    os.replace(temp, self.path / name)
                else:
                    with suppress(FileExistsError):
                        os.link(temp, self.path / name)
                _fsync_dir(self.path)
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(temp)

    @contextmanager
    def _io_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._error(doing, exc) from exc

    def _error(self, doing: str, exc: OSError) -> RegistryError:
        return RegistryError(f"{doing} failed: {exc.strerror or exc}", endpoint=self.address)


def _is_digest(reference: str) -> bool:
    return _DIGEST.fullmatch(reference) is not None


def _tag_of(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    tag = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return tag if isinstance(tag, str) else None


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


def _fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable (a file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
