"""Real inputs from public repositories (issue 11): envctl reads and keys every file that its own
tool reads (conda, micromamba or conda-lock; Azure ML; Docker), and refuses every template or
broken file with exit 2 and an error naming the file and the line.

`fixtures/golden/public-corpus.json` gives each manifest entry's expected outcome, decided by what
the file's own tool does, not by what envctl does: "read", or {"refused": CLASS, "why": ...}.

envctl reads a Dockerfile only as the build context of an Azure ML definition, so each one is
wrapped in a definition written to a temporary folder whose `build.path` is the Dockerfile's own
folder, as an absolute path: a definition read from disk takes it as given, and errors then name
the Dockerfile where it is in the corpus. Nothing of the corpus is copied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from hashing import compute_key, is_key, parse_image
from specio.files import load_spec
from tests.conftest import FIXTURES, HAS_CORPUS, PUBLIC_CORPUS, needs_corpus

pytestmark = needs_corpus
BASE = "127.0.0.1:5001/base/debian@sha256:" + "d" * 64
GOLDEN: dict[str, Any] = json.loads((FIXTURES / "golden" / "public-corpus.json").read_text())
MANIFEST: list[dict[str, str]] = (
    json.loads((PUBLIC_CORPUS / "manifest.json").read_text()) if HAS_CORPUS else []
)
KIND = {entry["path"]: entry["kind"] for entry in MANIFEST}
READ = [path for path, outcome in GOLDEN.items() if outcome == "read" and path in KIND]
REFUSED = [path for path, outcome in GOLDEN.items() if outcome != "read" and path in KIND]


@pytest.fixture(scope="module")
def wrappers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An Azure ML definition per Dockerfile, building it in its own folder."""
    root = tmp_path_factory.mktemp("wrappers")
    wrapped = {}
    for n, path in enumerate(p for p, kind in KIND.items() if kind == "dockerfile"):
        dockerfile = PUBLIC_CORPUS / path
        spec = root / f"{n:03d}" / "environment.yml"
        spec.parent.mkdir()
        spec.write_text(  # JSON strings are YAML strings: no quoting to get wrong
            f"build:\n  path: {json.dumps(str(dockerfile.parent))}\n"
            f"  dockerfile_path: {json.dumps(dockerfile.name)}\n"
        )
        wrapped[path] = spec
    return wrapped


def _spec_file(path: str, wrappers: dict[str, Path]) -> Path:
    """What envctl is given for a manifest entry: the file itself, or a Dockerfile's wrapper."""
    return wrappers[path] if KIND[path] == "dockerfile" else PUBLIC_CORPUS / path


def test_the_golden_file_judges_every_manifest_entry() -> None:
    assert len(MANIFEST) == 299
    assert Counter(KIND.values()) == {"conda": 177, "azureml": 31, "dockerfile": 91}
    assert list(GOLDEN) == [entry["path"] for entry in MANIFEST]
    for outcome in GOLDEN.values():
        assert outcome == "read" or set(outcome) == {"refused", "why"}, outcome


def test_what_the_tools_read_and_refuse_by_kind() -> None:
    assert Counter(KIND[path] for path in READ) == {"conda": 154, "azureml": 7, "dockerfile": 65}
    assert Counter(KIND[path] for path in REFUSED) == {"conda": 23, "azureml": 24, "dockerfile": 26}
    assert Counter(GOLDEN[path]["refused"] for path in REFUSED) == {
        "template": 62,
        "invalid-yaml": 2,
        "no-valid-keys": 1,
        "non-breaking-space": 3,
        "unknown-instruction": 1,
        "outside-the-spec": 4,
    }


@pytest.mark.parametrize("path", READ)
def test_every_file_its_tool_reads_is_read_and_keyed(path: str, wrappers: dict[str, Path]) -> None:
    spec = load_spec(_spec_file(path, wrappers), default_base=parse_image(BASE))
    assert is_key(compute_key(spec))


@pytest.mark.parametrize("path", REFUSED)
def test_every_file_its_tool_refuses_is_refused_at_its_line(
    path: str, wrappers: dict[str, Path], cli: CliRunner
) -> None:
    args = ["hash", "--no-resolve", "--base-image", BASE, str(_spec_file(path, wrappers))]
    result = cli.invoke(app, args)
    assert result.exit_code == 2, result.stdout or result.exception
    # the file named is the corpus file, also for a Dockerfile read through its wrapper
    assert re.search(rf"{re.escape(str(PUBLIC_CORPUS / path))}:\d+:", result.stderr), result.stderr
