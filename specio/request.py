"""The resolve request: a spec file and every file it names, sent by content.

    POST /v1/workspaces/{ws}/resolve        body: ResolveRequest

Both ends read the spec with `specio.files.read_spec_parts`, so the service gets the spec (and
key) that `load_spec` gets on the client's disk. `request_from_file` reads from disk through a
source that records each file it reads; `specio.received.spec_from_request` reads from memory
and writes nothing, except a build's context where a worker asks for it (`context_dir`), with
no setuid, setgid or sticky bit on the host.

Listing the context in memory (`specio.context.list_tree`, the walk and ignore rules of
`scan_context`) must reproduce the client's listing of it on disk. It does when the
ignore files come along: the client sends what `scan_context` lists, the files the spec names,
and `.dockerignore`/`.amlignore` even when they exclude themselves, so the same rules exclude
the same paths again (a named but ignored Dockerfile, the folder of a re-included `!file`).
Request paths are relative to the spec's folder, '/'-separated and normalized: '../' segments
only in front, no '.' or empty segments.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hashing import (
    SpecFormat,
)
from specio.files import (
    KeptFile,
    RecordingFiles,
    gather_spec_files,
    read_spec_parts,
)


class SpecFile(BaseModel):
    """One file, folder or symlink a spec names (or its build context holds), by content."""

    model_config = ConfigDict(extra="forbid")

    path: str  # relative to the spec file's folder, normalized, '/'-separated
    kind: Literal["file", "dir", "symlink"] = "file"
    mode: int = 0o644  # permission bits, 0 to 0o7777
    content: str = ""  # base64 of a file's bytes
    target: str = ""  # a symlink's target


class ResolveRequest(BaseModel):
    """A spec file's text (any format) or an envctl-format object, and the files it names."""

    model_config = ConfigDict(extra="forbid")

    spec: Annotated[str, Field(min_length=1)] | dict[str, Any]
    name: str = "spec.yml"  # the spec file's name, for errors
    format: SpecFormat | None = None
    files: list[SpecFile] = Field(default_factory=list)
    base_image: str | None = None  # for specs that name none (conda files)


def request_from_file(
    path: str | os.PathLike[str],
    *,
    format: SpecFormat | None = None,
    base_image: str | None = None,
) -> ResolveRequest:
    """Read a spec file and every file it names (conda file, Dockerfile, the build context as
    `scan_context` lists it) into a request. Raises the SpecErrors `load_spec` raises, and one
    where the spec names an absolute path (which a request cannot carry).

    A client installed alone (`pip install envctl`, without the `server` extra) has no conda or
    Docker parser: it gathers the same files without parsing them, and the server's checks
    are the ones that answer (with the same file, line and field)."""
    recorder = RecordingFiles(Path(path))
    try:
        read_spec_parts(recorder, format=format)
    except ImportError:  # the parsers are the server's extra: gather, unparsed, from the start
        recorder = RecordingFiles(Path(path))
        gather_spec_files(recorder, format=format)
    return ResolveRequest(
        spec=recorder.text,
        name=recorder.spec_path.name,
        format=format,
        files=[_spec_file(kept) for kept in recorder.kept()],
        base_image=base_image,
    )


def _spec_file(kept: KeptFile) -> SpecFile:
    """A kept file in its wire form."""
    content = base64.b64encode(kept.data).decode("ascii") if kept.kind == "file" else ""
    return SpecFile(
        path=kept.path, kind=kept.kind, mode=kept.mode, content=content, target=kept.target
    )
