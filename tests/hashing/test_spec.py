"""Reading the three spec formats; every error names its file, line and field."""

from __future__ import annotations

import pytest

from hashing import SpecError, complete_spec, compute_key, parse_spec_text
from hashing.imageref import parse_image


def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        complete_spec(parse_spec_text(text, "spec.yml"))
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("base_image: x\nbase_imag: y\n", 2, "base_imag", "unknown key"),
        ("base_image: x\nvariables:\n  N: 1\n", 3, "variables.N", "must be a string"),
        ("base_image: x\nvariables: {bad-name: '1'}\n", 2, "variables.bad-name", "invalid name"),
        ("base_image: x\nplatform: linux\n", 2, "platform", "os/arch"),
        ("base_image: Bad\n", 1, "base_image", "lowercase"),
        ("base_image: [a]\n", 1, "base_image", "must be a string"),
        ("base_image: x\nconda:\n  dependencies:\n    - ok\n    - 'numpy>>1'\n", 5,
         "conda.dependencies[1]", "invalid conda match spec"),
        ("base_image: x\nconda:\n  dependencies:\n    - pip:\n      - ok\n      - 'bad req !!'\n",
         6, "conda.dependencies[0].pip[1]", "invalid pip requirement"),
        ("base_image: x\nconda: {dependencies: [{npm: [x]}]}\n", 2, "conda.dependencies[0]",
         "match spec or a `pip:` list"),
        ("base_image: x\nconda: {dependencies: [x], extra: 1}\n", 2, "conda.extra", "unknown key"),
        ("base_image: x\nbase_image: y\n", 2, "base_image", "appears twice"),
        ("image: x\nbuild: {path: .}\n", 1, None, "exactly one of image and build"),
        ("image: x\nos_type: solaris\n", 2, "os_type", "must be one of"),
        ("image: x\nbuild: {path: ., dockerfile: D}\n", 2, "build.dockerfile", "unknown key"),
        ("name: only-a-name\n", 1, None, "cannot tell the format"),
        ("- a list\n", 1, None, "mapping"),
        ("base_image: x\nconda: {dependencies: [a]\n", 3, None, "invalid YAML"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_field(
    text: str, line: int, field: str | None, message: str
) -> None:
    error = _error(text)
    assert error.source == "spec.yml"
    assert error.line == line
    assert error.field == field
    assert message in error.message


def test_docker_step_errors_point_into_the_block() -> None:
    error = _error("base_image: x\ndocker_steps: |\n  RUN a\n  BOGUS b\n")
    assert (error.line, "unknown instruction" in error.message) == (4, True)


def test_a_plain_conda_file_needs_a_base_image() -> None:
    draft = parse_spec_text("dependencies: [numpy]\n", "env.yml")
    with pytest.raises(SpecError, match="--base-image"):
        complete_spec(draft)
    spec = complete_spec(draft, default_base=parse_image("ubuntu"))
    assert str(spec.base_image) == "docker.io/library/ubuntu:latest"


def test_azure_ml_metadata_does_not_change_the_key() -> None:
    plain = "image: ubuntu\n"
    decorated = (
        "$schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json\n"
        "name: n\nversion: 3\ndescription: d\ntags: {a: b}\nimage: ubuntu\n"
    )
    assert compute_key(complete_spec(parse_spec_text(plain, "a.yml"))) == compute_key(
        complete_spec(parse_spec_text(decorated, "b.yml"))
    )


def test_conda_variables_become_image_variables_and_conflicts_are_errors() -> None:
    spec = complete_spec(
        parse_spec_text("base_image: x\nconda: {variables: {A: '1'}, dependencies: [b]}\n", "s")
    )
    assert spec.variables == (("A", "1"),)
    error = _error("base_image: x\nvariables: {A: '2'}\nconda: {variables: {A: '1'}}\n")
    assert error.field == "variables.A"


def test_an_empty_conda_environment_is_no_environment() -> None:
    with_empty = complete_spec(parse_spec_text("base_image: x\nconda: {channels: [c]}\n", "s"))
    without = complete_spec(parse_spec_text("base_image: x\n", "s"))
    assert with_empty == without


def test_an_explicit_format_overrides_detection() -> None:
    with pytest.raises(SpecError, match="base_image"):
        parse_spec_text("dependencies: [numpy]\n", "s.yml", format="envctl")


def test_keys_are_names_as_written_not_yaml_1_1_booleans() -> None:
    spec = complete_spec(parse_spec_text("base_image: x\nvariables:\n  ON: 'a'\n  yes: 'b'\n", "s"))
    assert spec.variables == (("ON", "a"), ("yes", "b"))
    error = _error("base_image: x\nvariables:\n  A: on\n")
    assert error.message == "must be a string (quote it in YAML)"


def test_a_value_a_dockerfile_cannot_write_is_refused_where_it_is() -> None:
    error = _error('base_image: x\nvariables:\n  A: "one\\ntwo"\n')
    assert (error.line, error.field) == (3, "variables.A")
    assert "newline" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "base_image: x\nvariables: &a {A: *a}\n",  # recursive
        "base_image: x\nconda: {dependencies: &d [a, b]}\nvariables: {}\nx: *d\n",
    ],
)
def test_yaml_aliases_are_refused(text: str) -> None:
    assert "aliases" in _error(text).message
