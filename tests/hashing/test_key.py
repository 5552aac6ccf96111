"""The key's contract: its shape, its purity, and the golden vectors that pin it."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hashing import SCHEME, canonical_json, complete_spec, compute_key, is_key, parse_spec_text
from hashing.imageref import parse_image
from specio.files import load_spec
from tests.conftest import FIXTURES, copy_with_fixed_modes

GOLDEN = FIXTURES / "golden"
GOLDEN_DEFAULT_BASE = "registry.example.invalid/base/debian@sha256:" + "b" * 64


def _golden_keys(tree: Path) -> dict[str, str]:
    base = parse_image(GOLDEN_DEFAULT_BASE)
    specs = json.loads((GOLDEN / "keys.json").read_text())
    return {name: compute_key(load_spec(tree / name, default_base=base)) for name in specs}


def test_golden_keys_never_change(tmp_path: Path) -> None:
    expected = json.loads((GOLDEN / "keys.json").read_text())
    actual = _golden_keys(copy_with_fixed_modes(GOLDEN, tmp_path / "golden"))
    assert actual == expected, (
        "a golden key changed: every cached image would be orphaned. If this is intended, bump "
        f"hashing.key.SCHEME and rewrite fixtures/golden/keys.json. Actual keys: {actual}"
    )


def test_keys_are_32_lowercase_hex_and_json_starts_with_the_scheme() -> None:
    spec = complete_spec(parse_spec_text("base_image: ubuntu\n", "s.yml"))
    assert is_key(compute_key(spec))
    assert canonical_json(spec).startswith(f'["{SCHEME}",')


def test_the_key_function_does_no_io_and_reads_no_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = complete_spec(
        parse_spec_text(
            "base_image: ubuntu\ndocker_steps: RUN true\nconda: {dependencies: [numpy]}\n", "s.yml"
        )
    )
    before = compute_key(spec)

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("the key function touched the outside world")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "environ", {})
    monkeypatch.setattr(os, "stat", forbidden)
    assert compute_key(spec) == before


def test_the_three_formats_give_one_key_for_one_environment() -> None:
    conda = "channels: [conda-forge]\ndependencies: [python=3.11, {pip: [requests]}]\n"
    base = "127.0.0.1:5001/base/debian@sha256:" + "c" * 64
    conda_draft = parse_spec_text(conda, "environment.yml")
    conda_env = parse_spec_text(conda, "environment.yml").conda
    assert conda_env is not None
    as_conda = complete_spec(conda_draft, default_base=parse_image(base))
    as_envctl = complete_spec(
        parse_spec_text(
            f"base_image: {base}\nconda:\n  name: x\n  {conda.replace(chr(10), chr(10) + '  ')}",
            "e.yml",
        )
    )
    as_azureml = complete_spec(
        parse_spec_text(
            f"name: n\nversion: 2\nimage: {base}\nconda_file: environment.yml\n", "a.yml"
        ),
        conda=(conda_env, {}),
    )
    assert compute_key(as_conda) == compute_key(as_envctl) == compute_key(as_azureml)


def test_explain_finds_a_difference_exactly_when_the_keys_differ() -> None:
    from hashing.explain import diff

    def spec(body: str) -> Any:
        return complete_spec(
            parse_spec_text(
                f"base_image: ubuntu\ndocker_steps: |\n  RUN <<EOF\n  {body}\n  EOF\n", "s"
            )
        )

    a, b = spec("echo one"), spec("echo two")  # only a heredoc body differs
    assert compute_key(a) != compute_key(b)
    assert [d.input for d in diff(a, b)] == ["docker_steps"]
    assert diff(a, spec("echo one")) == []
