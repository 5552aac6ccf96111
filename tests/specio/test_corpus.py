"""Real inputs nobody here wrote: every conda file and Azure ML definition of azureml-examples."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from hashing import compute_key, parse_image
from specio.files import load_spec
from tests.conftest import CORPUS, FIXTURES, HAS_CORPUS, copy_with_fixed_modes, needs_corpus

pytestmark = needs_corpus
_NO_INDEX: dict[str, list[str]] = {
    "conda_files": [],
    "environment_definitions": [],
    "dockerfiles": [],
}
INDEX = json.loads((CORPUS / "index.json").read_text()) if HAS_CORPUS else _NO_INDEX
MISSING_CONDA = "sdk/python/endpoints/online/deploy-with-packages/custom-model/environment/"
BROKEN = MISSING_CONDA + "sklearn-regression-env.yml"
BASE = "127.0.0.1:5001/base/debian@sha256:" + "d" * 64
CORPUS_KEYS = FIXTURES / "golden" / "corpus-keys.json"


def _paths(kind: str) -> list[str]:
    return [str(CORPUS / rel) for rel in INDEX[kind]]


def test_every_conda_file_is_read_and_keyed(cli: CliRunner) -> None:
    files = _paths("conda_files")
    assert len(files) == 126
    result = cli.invoke(app, ["hash", "--json", "--no-resolve", "--base-image", BASE, *files])
    assert result.exit_code == 0, result.stderr
    assert [item["spec"] for item in json.loads(result.stdout)] == files


def test_every_azure_ml_definition_is_read_and_keyed(cli: CliRunner) -> None:
    files = [p for p in _paths("environment_definitions") if not p.endswith(BROKEN)]
    assert len(files) == 16
    result = cli.invoke(app, ["hash", "--json", "--no-resolve", *files])
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 16


def test_the_definition_with_a_missing_conda_file_names_it(cli: CliRunner) -> None:
    result = cli.invoke(app, ["hash", "--no-resolve", str(CORPUS / BROKEN)])
    assert result.exit_code == 2
    assert f"{CORPUS / BROKEN}:4: conda_file: file not found" in result.stderr
    assert str(CORPUS / MISSING_CONDA / "conda.yaml") in result.stderr


def _corpus_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    base = parse_image(BASE)
    with tempfile.TemporaryDirectory() as tmp:
        tree = copy_with_fixed_modes(CORPUS, Path(tmp) / "corpus")
        for rel in INDEX["conda_files"] + INDEX["environment_definitions"]:
            if rel != BROKEN:
                keys[rel] = compute_key(load_spec(tree / rel, default_base=base))
    return keys


def test_corpus_keys_are_stable() -> None:
    """A wide net under the golden vectors: no real input's key moves without a scheme bump."""
    assert _corpus_keys() == json.loads(CORPUS_KEYS.read_text())


def test_copies_of_one_environment_in_different_folders_share_a_key() -> None:
    keys = _corpus_keys()
    cli_copy = "cli/endpoints/batch/deploy-models/openai-embeddings/environment/environment.yml"
    sdk_copy = (
        "sdk/python/endpoints/batch/deploy-models/openai-embeddings/environment/environment.yml"
    )
    assert keys[cli_copy] == keys[sdk_copy]
    with tempfile.TemporaryDirectory() as tmp:  # the name of a folder is not content
        moved = Path(tmp) / "elsewhere.yml"
        moved.write_text((CORPUS / INDEX["conda_files"][0]).read_text())
        base = parse_image(BASE)
        assert compute_key(load_spec(moved, default_base=base)) == keys[INDEX["conda_files"][0]]
