"""The host's cache of built layers: a layer is made once per key (say a package's sha256, the
environment prefix and the layout version) and read back by every build that needs it.

    ROOT/blobs/sha256/HEX     the gzipped layer, named by its digest (shared by equal layers)
    ROOT/keys/KEY.json        {"digest", "diff_id", "size"}: what KEY's layer is

Both are written to a temporary name and renamed into place, so a reader sees a whole entry or
none, and two processes making the same key at once both end with the same bytes. A blob is
trusted by its size when looked up, and checked against its digest as it is read: a corrupt
one (a disk error, a hand edit) raises CorruptLayer and takes its entry away, so the next build
makes it again instead of sending the bad bytes a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from builder.errors import CorruptLayer
from builder.layer import Layer

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_CHUNK = 1 << 20


class LayerCache:
    """Built layers by key under `root` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> Layer | None:
        """KEY's layer if it is cached whole; None otherwise (an entry whose blob is gone or
        has another size is dropped)."""
        found = self.entry(key)
        return None if found is None else found[0]

    def entry(self, key: str) -> tuple[Layer, dict[str, Any]] | None:
        """KEY's layer and the note kept with it, if it is cached whole; None otherwise."""
        entry = self._entry(key)
        try:
            record = json.loads(entry.read_text())
            layer = Layer(self._blob(record["digest"]), record["digest"], record["diff_id"],
                          int(record["size"]))  # fmt: skip
            note = record.get("note", {})
            if not isinstance(note, dict):
                raise TypeError("a note is an object")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            whole = layer.path.stat().st_size == layer.size
        except OSError:
            whole = False
        if not whole:
            entry.unlink(missing_ok=True)
            return None
        return layer, note

    def layer(self, key: str, make: Callable[[Path], Layer]) -> Layer:
        """KEY's layer: the cached one, or the one `make(out)` writes to `out` (then cached)."""
        return self.noted(key, lambda out: (make(out), {}))[0]

    def noted(
        self, key: str, make: Callable[[Path], tuple[Layer, Mapping[str, Any]]]
    ) -> tuple[Layer, dict[str, Any]]:
        """KEY's layer and its note (JSON, kept beside it): the cached ones, or those
        `make(out)` returns, having written the layer to `out` (then cached)."""
        cached = self.entry(key)
        if cached is not None:
            return cached
        work = self.work
        made, note = make(work / f"{uuid.uuid4().hex}.tar.gz")
        blob = self._blob(made.digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(made.path, blob)
        record = {"digest": made.digest, "diff_id": made.diff_id, "size": made.size}
        if note:
            record["note"] = dict(note)
        _write(self._entry(key), json.dumps(record, sort_keys=True).encode(), work)
        return Layer(blob, made.digest, made.diff_id, made.size, made.media_type), dict(note)

    @property
    def work(self) -> Path:
        """A folder on the cache's file system for files about to be renamed into it."""
        work = self.root / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        return work

    def drop(self, key: str) -> None:
        """Forget KEY's layer (its blob stays for any other key that shares it)."""
        self._entry(key).unlink(missing_ok=True)

    def read(self, key: str, layer: Layer) -> Iterator[bytes]:
        """The layer's bytes, checked against its digest as they pass: LayerError at the end
        if they differ, and KEY's entry is gone (its next build makes the layer again)."""
        hasher = hashlib.sha256()
        with open(layer.path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
                yield chunk
        if f"sha256:{hasher.hexdigest()}" != layer.digest:
            self._entry(key).unlink(missing_ok=True)
            layer.path.unlink(missing_ok=True)
            raise CorruptLayer(
                f"the cached layer of {key} is corrupt (not {layer.digest}); dropped"
            )

    def _entry(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a layer cache key: {key!r}")
        return self.root / "keys" / f"{key}.json"

    def _blob(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "blobs" / "sha256" / hexdigest


def _write(path: Path, data: bytes, work: Path) -> None:
    """Write `data` to `path` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = work / f"{uuid.uuid4().hex}.json"
    partial.write_bytes(data)
    os.replace(partial, path)
