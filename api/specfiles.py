"""Reading spec files from disk: the I/O edge in front of the pure `hashing` package.

A spec file may name other files: a conda environment, an Azure ML build context and its
Dockerfile. This module reads them, lists build contexts (`builder.context.scan_context`) and
hands contents to `hashing`, so every error still names the file, line and field it is about.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.context import scan_context
from hashing import (
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
