from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hashing.dockersteps import (
    _ONBUILD_SUB_FLAGS,
    DockerStep,
    _renderings,
    dockerfile_lines,
    parse_steps,
)
from hashing.errors import SpecError
from hashing.stages import parse_dockerfile
from tests.conftest import CORPUS, EXAMPLES, ROOT, needs_corpus


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
        ("FROM a AS x\nFROM b AS X", "duplicate stage name 'x'"),
        ("ARG V\nFROM base:$V", "build argument V, which has no default"),
        ("FROM base:${W}", "build argument W, which is not declared before FROM"),
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


# ------------------------------------------------------------ writing steps back: dockerfile_line
#
# The contract: `parse_steps(step.dockerfile_line()) == (step,)` for every step the parser gives,
# written from the parsed form (so equal steps render equal text), with `original` only for the
# two forms the parsed form cannot express (ONBUILD sub-flags, non-ASCII flags).

_DOCKERFILES = [
    *(pytest.param(p, marks=needs_corpus, id=f"corpus/{p.relative_to(CORPUS)}")
      for p in sorted(CORPUS.glob("**/Dockerfile"))),
    *(pytest.param(p, id=str(p.relative_to(ROOT))) for p in sorted(EXAMPLES.glob("**/Dockerfile"))),
]  # fmt: skip

# No control characters (newlines end an instruction); tabs, quotes, escapes and non-ASCII stay.
_CHAR = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from(
    " \t\"'\\$=[]{},-<`#"
)
_free = st.text(_CHAR, min_size=1, max_size=12)
_ascii = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
_plain = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"'\\"))
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,5}", fullmatch=True)
_gap = st.sampled_from([" ", "  ", "\t"])
_case = st.sampled_from([str.upper, str.lower, str.title])


@st.composite
def _flags(draw: st.DrawFn) -> str:
    """`--name=value` flags, some quoted with spaces inside."""
    out = []
    for _ in range(draw(st.integers(0, 2))):
        # ASCII, and balanced: a flag that runs into the instruction's argument is not a flag
        # test (and non-ASCII flags make the parser itself fail: see the fallback test)
        value = draw(st.sampled_from(['"a b"', "a\\ b", "'x y'", '"q\\"r"', ""]) | _plain)
        out.append(f"--{draw(_name)}={value} ")
    return "".join(out)


@st.composite
def _heredoc(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(["EOF", "END", "X1"]))
    opener = draw(st.sampled_from(["<<", "<<-"])) + draw(st.sampled_from([name, f'"{name}"']))
    body = draw(st.lists(_free.filter(lambda line: line.strip() != name), max_size=3))
    keyword = draw(st.sampled_from(["RUN", "COPY"]))
    rest = draw(st.sampled_from(["", " bash", " /dst"]))
    return keyword, f"{opener}{rest}\n" + "".join(f"{line}\n" for line in body) + name


def _json(items: list[str]) -> str:
    return json.dumps(items, ensure_ascii=False)


_json_args = st.lists(_free, min_size=1, max_size=3).map(_json)
_value = _ascii | _free.map(lambda v: json.dumps(v, ensure_ascii=False)) | st.just("")
_pairs = st.lists(st.tuples(_name, _value), min_size=1, max_size=3).map(
    lambda ps: " ".join(f"{k}={v}" for k, v in ps)
)
_bodies = {
    "RUN": _free | _json_args,
    "CMD": _free | _json_args,
    "ENTRYPOINT": _free | _json_args,
    "SHELL": _json_args,
    "ENV": _pairs | st.builds(lambda k, v: f"{k} {v}", _name, _free),
    "LABEL": _pairs | st.builds(lambda k, v: f"{k} {v}", _name, _free),
    "COPY": st.lists(_ascii, min_size=2, max_size=3).map(" ".join) | _json_args,
    "ADD": st.lists(_ascii, min_size=2, max_size=3).map(" ".join),
    "EXPOSE": st.lists(st.integers(1, 65535).map(str), min_size=1, max_size=3).map(" ".join),
    "VOLUME": st.lists(_ascii, min_size=1, max_size=2).map(" ".join) | _json_args,
    "ARG": st.lists(_name | st.builds("{}={}".format, _name, _value), min_size=1, max_size=2).map(
        " ".join
    ),
    "USER": _ascii,
    "WORKDIR": _free,
    "STOPSIGNAL": _ascii,
    "MAINTAINER": _free,
    "HEALTHCHECK": st.sampled_from(["NONE", "none"])
    | st.builds("{} {}".format, st.sampled_from(["CMD", "cmd"]), _free | _json_args),
}


@st.composite
def _step_parts(draw: st.DrawFn) -> tuple[str, str]:
    """One instruction as (keyword, the rest): flags, odd spacing, ONBUILD (no sub-flags)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_heredoc())
    keyword = draw(st.sampled_from(sorted(_bodies)))
    body = draw(_bodies[keyword])
    if keyword not in ("HEALTHCHECK", "MAINTAINER") and draw(st.booleans()):
        return "ONBUILD", draw(_case)(keyword) + draw(_gap) + body
    return keyword, draw(_flags()) + body


def _written(parts: tuple[str, str], case: Callable[[str], str] = str, gap: str = " ") -> str:
    return case(parts[0]) + gap + parts[1]


def _line(step: DockerStep) -> str | None:
    """`step.dockerfile_line()`, or None for the documented exceptions: a step whose text ends
    in a lone escape character (only the end of its text reads it that way), an ONBUILD with a
    heredoc (its body is not in the parsed form)."""
    try:
        return step.dockerfile_line()
    except SpecError:
        head = next(_renderings(step)).split("\n")[0]
        onbuild_heredoc = step.instruction == "ONBUILD" and "<<" in head
        assert onbuild_heredoc or _ENDS_IN_ESCAPE.search(head), head
        return None


_ENDS_IN_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\[ \t]*$")


def _rendered_from_parsed_form(step: DockerStep) -> bool:
    """True unless the rendering used `original` for a documented reason (see dockerfile_line):
    non-ASCII flags, or flags on ONBUILD's sub-instruction."""
    return (
        step.dockerfile_line() in list(_renderings(step))
        or not all(flag.isascii() for flag in step.flags)
        or bool(_ONBUILD_SUB_FLAGS.match(step.original))
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(_step_parts(), min_size=1, max_size=4))
def test_every_parsed_step_reads_back_the_same(parts: list[tuple[str, str]]) -> None:
    try:
        steps = parse_steps("\n".join(map(_written, parts)), "generated")
    except SpecError:
        assume(False)
        raise
    for step in steps:
        line = _line(step)
        if line is None:
            continue
        assert parse_steps(line, "rendered") == (step,), line
        assert _rendered_from_parsed_form(step), line
        assert parse_steps(line, "again")[0].dockerfile_line() == line


@settings(max_examples=200, deadline=None)
@given(st.lists(_step_parts(), min_size=1, max_size=6))
def test_steps_written_together_are_each_as_written_alone(parts: list[tuple[str, str]]) -> None:
    """One parse checks them all; the lines are those each step writes alone, or it raises
    as that step would."""
    try:
        steps = parse_steps("\n".join(map(_written, parts)), "generated")
    except SpecError:
        assume(False)
        raise
    try:
        alone = [step.dockerfile_line() for step in steps]
    except SpecError:
        with pytest.raises(SpecError):
            dockerfile_lines(steps)
        return
    assert dockerfile_lines(steps) == alone


@settings(max_examples=200, deadline=None)
@given(_step_parts(), _case, _gap)
def test_equal_steps_render_equal_text(
    parts: tuple[str, str], case: Callable[[str], str], gap: str
) -> None:
    try:
        tidy, messy = (
            parse_steps(_written(parts), "a"),
            parse_steps(_written(parts, case, gap), "b"),
        )
    except SpecError:
        assume(False)
        raise
    assert tidy == messy
    assert [_line(s) for s in tidy] == [_line(s) for s in messy]


@pytest.mark.parametrize("path", _DOCKERFILES)
def test_every_corpus_instruction_reads_back_the_same(path: Path) -> None:
    parsed = parse_dockerfile(path.read_text(), str(path))
    assert parsed.steps
    for step in parsed.steps:
        assert parse_steps(step.dockerfile_line(), "rendered") == (step,)
        assert _rendered_from_parsed_form(step)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("run   echo  'a  b' \\\n   && true", "RUN echo  'a  b'    && true"),
        ("env A=1   B='x y'", "ENV A=1 B='x y'"),
        ("ENV OLD some  words", "ENV OLD some  words"),  # `OLD=some  words` would be 2 words
        ('COPY ["a b","/c"]', 'COPY ["a b", "/c"]'),
        ('cmd [ "a" ,"b" ]', 'CMD ["a", "b"]'),
        ('healthcheck --interval=5s cmd ["x"]', 'HEALTHCHECK --interval=5s CMD ["x"]'),
        ('RUN --mount="type=cache, target=/x" true', "RUN --mount=type=cache,\\ target=/x true"),
        ("onbuild run echo", "ONBUILD RUN echo"),
        ("RUN <<-EOF\n\tx\n\tEOF\n", "RUN <<-EOF\n\tx\nEOF"),
    ],
)
def test_lines_are_written_in_one_canonical_way(text: str, line: str) -> None:
    (step,) = parse_steps(text, "spec.yml")
    assert step.dockerfile_line() == line


@pytest.mark.parametrize(
    "text",
    [
        "# escape=`\nRUN echo a\\",  # `a\` under the backtick escape: a continuation under `\`
        "RUN echo a \\ \\",  # at the very end only: the last `\` continues into nothing
    ],
)
def test_a_step_that_only_reads_the_same_where_it_was_is_an_error(text: str) -> None:
    (step,) = parse_steps(text, "spec.yml", first_line=3)
    with pytest.raises(SpecError, match="cannot be written") as info:
        step.dockerfile_line()
    assert info.value.line == step.line


@pytest.mark.parametrize(
    "text",
    [
        "ONBUILD RUN <<EOF\nx\nEOF\n",  # the parser drops an ONBUILD heredoc body
        'CMD --A="\xa0" x',  # the parser cuts multi-byte flags apart
        'CMD --A="é" x',
    ],
)
def test_what_dockers_parser_cannot_read_faithfully_is_refused(text: str) -> None:
    with pytest.raises(SpecError):
        parse_steps(text, "spec.yml")


@pytest.mark.parametrize(
    ("text", "image"),
    [
        ("ARG V=13.3.0\nFROM nvidia/cuda:${V}-devel", "docker.io/nvidia/cuda:13.3.0-devel"),
        ("ARG R=quay.io\nARG O=jupyter\nARG B=$R/$O/base\nFROM $B", "quay.io/jupyter/base:latest"),
        ("ARG V\nFROM debian:${V:-bookworm}", "docker.io/library/debian:bookworm"),
        ("ARG V=x\nFROM debian${V:+:bookworm}", "docker.io/library/debian:bookworm"),
    ],
)
def test_from_reads_the_build_arguments_defaults_as_docker_does(text: str, image: str) -> None:
    assert str(parse_dockerfile(text, "Dockerfile").base_image) == image


def test_a_from_written_through_an_argument_is_the_same_spec_as_written_out() -> None:
    digest = "sha256:" + "b" * 64
    through = parse_dockerfile(f"ARG BASE=busybox@{digest}\nFROM $BASE\nRUN echo hi\n", "D")
    written = parse_dockerfile(f"FROM busybox@{digest}\nRUN echo hi\n", "D")
    assert (through.base_image, through.steps) == (written.base_image, written.steps)


def test_a_global_arg_default_reaches_the_stage_as_docker_applies_it() -> None:
    digest = "sha256:" + "a" * 64
    one = parse_dockerfile(f"ARG V=1\nFROM busybox@{digest}\nARG V\nRUN echo $V\n", "D1")
    two = parse_dockerfile(f"ARG V=2\nFROM busybox@{digest}\nARG V\nRUN echo $V\n", "D2")
    assert one.steps != two.steps, "different defaults build different images"
    assert one.steps[0].dockerfile_line() == "ARG V=1"
    written = parse_dockerfile(f"FROM busybox@{digest}\nARG V=1\nRUN echo $V\n", "D3")
    assert one.steps == written.steps


@pytest.mark.parametrize("bad", [1, 2, 150, 299, 300])
def test_the_bad_line_is_found_wherever_it_is(bad: int) -> None:
    lines = [f"RUN echo {n}" for n in range(1, 301)]
    lines[bad - 1] = "ENV a"
    with pytest.raises(SpecError) as caught:
        parse_steps("\n".join(lines) + "\n", "steps", first_line=10)
    assert caught.value.line == bad + 9


def test_the_parser_in_a_child_process_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from hashing import goparse

    text = "RUN a\nCOPY --chmod=644 <<EOF /x\nhello\nEOF\nONBUILD RUN b\n"
    here = parse_steps(text, "steps")
    pool = goparse._Pool()
    monkeypatch.setattr(goparse, "_pool", pool)
    try:
        assert parse_steps(text, "steps") == here
        with pytest.raises(SpecError) as caught:
            parse_steps("RUN a\nENV a\n", "steps")
        assert caught.value.line == 2
    finally:
        pool.close()
