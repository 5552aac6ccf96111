from __future__ import annotations

import pytest

from hashing.dockersteps import parse_dockerfile, parse_steps
from hashing.errors import SpecError


def _same(a: str, b: str) -> bool:
    return parse_steps(a, "a") == parse_steps(b, "b")


def test_what_dockers_parser_ignores_does_not_count() -> None:
    written = 'run echo "a  b" \\\n  && echo c\n# a comment\n\nENV A=1  B=2\n'
    tidy = 'RUN    echo "a  b"   && echo c\nENV A=1 B=2'
    assert _same(written, tidy)


def test_comments_inside_a_continued_instruction_are_dropped() -> None:
    assert _same("RUN a && \\\n# note\n b\n", "RUN a &&  b")


def test_json_form_ignores_whitespace_between_elements() -> None:
    assert _same('CMD ["echo",   "x"]', 'CMD ["echo","x"]')


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('RUN echo "a  b"', 'RUN echo "a b"'),
        ("RUN echo a\nRUN echo b", "RUN echo b\nRUN echo a"),
        ('CMD ["echo", "x"]', "CMD echo x"),
        ("COPY --chown=1:1 a /a", "COPY a /a"),
        ("ENV A=1", "ENV A=2"),
    ],
)
def test_anything_docker_reads_differently_differs(a: str, b: str) -> None:
    assert not _same(a, b)


def test_the_escape_directive_is_honoured() -> None:
    assert _same("# escape=`\nRUN echo a `\n  b\n", "RUN echo a   b")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("RUN a\nFROM x", 11, "cannot contain FROM"),
        ("RUN a\nENV a\n", 11, "ENV must have two arguments"),
        ("RUN a\nFOO b", 11, "unknown instruction"),
        ("RUN", 10, "needs arguments"),
    ],
)
def test_invalid_steps_name_their_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_steps(text, "spec.yml", first_line=10)
    assert info.value.line == line
    assert info.value.source == "spec.yml"


def test_a_dockerfile_splits_into_base_and_steps() -> None:
    parsed = parse_dockerfile(
        "# syntax and comments first\nARG UNUSED=1\nFROM --platform=linux/arm64 "
        "python:3.8 AS build\nRUN pip install x\n",
        "Dockerfile",
    )
    assert str(parsed.base_image) == "docker.io/library/python:3.8"
    assert parsed.platform == "linux/arm64"
    assert [s.instruction for s in parsed.steps] == ["RUN"]
    assert parsed.steps[0].line == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN x", "no FROM"),
        ("FROM a\nFROM b", "multi-stage"),
        ("ARG V=1\nFROM base:$V", "build argument"),
        ("RUN x\nFROM a", "RUN before FROM"),
        ("FROM Bad_Name", "lowercase"),
    ],
)
def test_unsupported_dockerfiles_are_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_dockerfile(text, "Dockerfile")


def test_healthcheck_reads_its_cmd_word_in_any_case() -> None:
    assert _same("HEALTHCHECK --interval=5s cmd true", "HEALTHCHECK --interval=5s CMD true")


@pytest.mark.parametrize("text", ["", "\n\n", "# RUN commented out\n  # and this\n"])
def test_no_instructions_means_no_steps(text: str) -> None:
    assert parse_steps(text, "spec.yml") == ()
