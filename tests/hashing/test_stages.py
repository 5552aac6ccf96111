"""Whole Dockerfiles (issue 11): every stage read as Docker reads it, the environment on the root
of the last stage's chain, each stage in the key, and BuildKit's features named where they are."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing import compute_key
from hashing.dockersteps import parse_steps
from hashing.errors import SpecError
from hashing.formats import parse_spec_text
from hashing.key import canonical_inputs
from hashing.spec import EnvironmentSpec, complete_spec
from hashing.stages import classic_builder_refusal, parse_docker_steps, parse_dockerfile

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
BUILD_THEN_RUN = f"""# syntax=docker/dockerfile:1
ARG TOOLS=busybox@{A}
FROM $TOOLS AS build
RUN echo built > /out
FROM debian@{B}
COPY --from=build /out /out
COPY --from=0 /out /again
RUN cat /out
"""


def _spec(text: str) -> EnvironmentSpec:
    parsed = parse_dockerfile(text, "Dockerfile")
    draft = parse_spec_text("build: {path: ctx}\n", "env.yml")
    return complete_spec(draft, dockerfile=parsed)


def test_each_stage_is_read_and_the_environment_goes_under_the_last() -> None:
    parsed = parse_dockerfile(BUILD_THEN_RUN, "Dockerfile")
    assert str(parsed.base_image) == f"docker.io/library/debian@{B}"
    assert parsed.steps == ()
    build, final = parsed.stages
    assert (str(build.image), build.name, build.line) == (f"docker.io/library/busybox@{A}",
                                                          "build", 3)  # fmt: skip
    assert final.is_environment
    assert final.line == 5
    assert [s.instruction for s in final.steps] == ["COPY", "COPY", "RUN"]
    written = _spec(BUILD_THEN_RUN).dockerfile_lines("env")
    assert written[0] == f"FROM docker.io/library/busybox@{A} AS build"
    assert written[2:5] == ["FROM env", "COPY --from=build /out /out", "COPY --from=0 /out /again"]


def test_a_final_stage_from_an_earlier_one_puts_the_environment_at_the_chains_root() -> None:
    """conda-store's shape: base, then prod and dev FROM base; jupyter's: FROM $ARG naming a
    stage."""
    text = (
        f"ARG ROOT=root_image\nFROM ubuntu@{A} AS root_image\nRUN a\nFROM busybox@{B} AS tool\n"
        "FROM $ROOT AS prod\nCOPY --from=tool /bin/x /x\nFROM prod AS dev\nRUN b\n"
    )
    parsed = parse_dockerfile(text, "Dockerfile")
    assert str(parsed.base_image) == f"docker.io/library/ubuntu@{A}"
    root, tool, prod, dev = parsed.stages
    assert root.is_environment
    assert root.name == "root_image"
    assert (tool.image is not None, prod.parent, dev.parent) == (True, "root_image", "prod")
    assert next(prod.dockerfile_lines("env", frozenset({"root_image", "tool"}))) == (
        "FROM root_image AS prod"
    )


def test_a_single_stage_is_read_as_it_always_was() -> None:
    parsed = parse_dockerfile(f"FROM busybox@{A} AS only\nRUN x\n", "Dockerfile")
    assert parsed.stages == ()
    assert [s.instruction for s in parsed.steps] == ["RUN"]
    assert "stages" not in _canonical(f"FROM busybox@{A}\nRUN x\n")


def _canonical(text: str) -> dict[str, object]:
    return canonical_inputs(_spec(text))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM a AS x\nFROM b AS X\n", 2, "duplicate stage name 'x'"),
        ("FROM a AS 1st\nFROM b\n", 1, "invalid name for a build stage"),
        ("FROM a AS scratch\nFROM b\n", 1, "invalid name for a build stage"),
        ("FROM a AS x\nRUN y\nFROM b --platform=linux/amd64\n", 3, "FROM takes IMAGE"),
        ("FROM a\nFROM --platform=windows/arm b\n", 2, "platform"),
        ("ARG V\nFROM a\nFROM b:$V\n", 3, "build argument V, which has no default"),
    ],
)
def test_a_stage_docker_refuses_is_refused_on_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        parse_dockerfile(text, "Dockerfile")
    assert caught.value.line == line


def test_every_stage_is_in_the_key() -> None:
    key = compute_key(_spec(BUILD_THEN_RUN))
    assert compute_key(_spec(BUILD_THEN_RUN.replace("echo built", "echo other"))) != key
    assert compute_key(_spec(BUILD_THEN_RUN.replace(f"@{A}", f"@{B}"))) != key  # its digest
    assert compute_key(_spec(BUILD_THEN_RUN.replace("AS build", "AS b2"))) != key
    pinned = _spec(BUILD_THEN_RUN.replace(f"busybox@{A}", "busybox:1"))
    assert not pinned.pinned  # a stage's tag must be pinned, as the base's is
    assert pinned.with_images(lambda i: i if i.pinned else i.with_digest(A)).pinned


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["", "# a comment", "   "]), min_size=3, max_size=3),
    st.sampled_from([str.lower, str.upper, str.title]),
)
def test_what_docker_ignores_between_stages_leaves_the_key(
    gaps: list[str], case: Callable[[str], str]
) -> None:
    lines = BUILD_THEN_RUN.splitlines()
    lines.insert(4, gaps[0])  # between the stages
    lines.insert(1, gaps[1])
    lines.append(gaps[2])
    text = "\n".join(lines).replace("FROM debian", f"{case('from')} debian")
    assert compute_key(_spec(text)) == compute_key(_spec(BUILD_THEN_RUN))


def test_the_digest_of_any_stage_changes_the_key() -> None:
    def key(first: str, second: str) -> str:
        return compute_key(
            _spec(f"FROM a@{first} AS x\nRUN y\nFROM b@{second}\nCOPY --from=x / /\n")
        )

    assert len({key(A, A), key(A, B), key(B, A), key(B, B)}) == 4


def test_envctl_steps_may_hold_earlier_stages() -> None:
    text = f"FROM busybox@{A} AS tools\nRUN echo t > /t\nFROM base_image\nCOPY --from=tools /t /t\n"
    steps, stages = parse_docker_steps(text, "spec.yml", first_line=5)
    assert steps == ()
    assert [s.is_environment for s in stages] == [False, True]
    assert stages[1].line == 7
    plain, none = parse_docker_steps("RUN a\n", "spec.yml")
    assert (plain, none) == (parse_steps("RUN a\n", "spec.yml"), ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"FROM busybox@{A} AS tools\nRUN x\n", "found 0"),
        ("FROM base_image\nFROM base_image\n", "found 2"),
        (f"FROM base_image AS env\nFROM busybox@{A}\n", "the last stage must"),
    ],
)
def test_envctl_stages_mark_the_environments_once(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_docker_steps(text, "spec.yml")


def test_an_envctl_spec_with_stages_is_keyed_with_them() -> None:
    head = f"base_image: debian@{B}\ndocker_steps: |\n"
    body = f"  FROM busybox@{A} AS tools\n  FROM base_image\n  COPY --from=tools /t /t\n"
    spec = complete_spec(parse_spec_text(head + body, "spec.yml"))
    assert spec.stage_names() == {"tools"}
    assert [str(i) for i in spec.images()] == [f"docker.io/library/debian@{B}",
                                              f"docker.io/library/busybox@{A}"]  # fmt: skip
    other = complete_spec(parse_spec_text(head + body.replace("/t /t", "/t /u"), "spec.yml"))
    assert compute_key(spec) != compute_key(other)


@pytest.mark.parametrize(
    ("step", "feature"),
    [
        ("RUN --mount=type=cache,target=/c true", "RUN --mount"),
        ("RUN --network=none true", "RUN --network"),
        ("COPY --chmod=644 a /a", "COPY --chmod"),
        ("COPY --link a /a", "COPY --link"),
        ("ADD --checksum=sha256:00 https://example.invalid/x /x", "ADD --checksum"),
        ("RUN <<EOF\necho hi\nEOF", "a heredoc in RUN"),
        ("ONBUILD COPY --chmod=644 a /a", "COPY --chmod"),
    ],
)
def test_a_buildkit_feature_is_named_with_its_line(step: str, feature: str) -> None:
    steps = parse_steps(f"RUN true\nCOPY --chown=1:1 --from=x a /a\n{step}\n", "spec.yml")
    error = classic_builder_refusal(steps)
    assert error is not None
    assert error.message.startswith(f"{feature} is a BuildKit feature"), error.message
    assert error.line == 3


def test_what_the_classic_builder_reads_is_not_refused() -> None:
    text = "FROM a\nCOPY --from=x --chown=1:1 a /a\nADD --chown=1 b /b\n"
    text += "HEALTHCHECK --retries=3 CMD x\n"
    assert classic_builder_refusal(parse_dockerfile(text, "Dockerfile").steps) is None


def test_an_onbuild_triggers_flags_are_kept_and_keyed() -> None:
    one, two = (parse_steps(f"ONBUILD COPY --chown={u} . /home\n", "s")[0] for u in ("a", "b"))
    assert one != two
    assert one.flags == ("--chown=a",)
    assert one.dockerfile_line() == "ONBUILD COPY --chown=a . /home"
    assert parse_steps(one.dockerfile_line(), "again") == (one,)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # the classic builder knows a stage's name once it is built: any other name is an image,
        # looked up among the engine's images by a prefix of their ids (another tenant's too)
        (f"FROM a@{A} AS cafe\nCOPY --from=cafe / /loot\n", 2),
        (f"FROM a@{A} AS build\nCOPY --from=cafe / /loot\nFROM b@{B} AS cafe\nFROM build\n", 2),
        (f"FROM a@{A}\nCOPY --from=0 / /x\n", 2),
        (f"FROM a@{A} AS x\nFROM b@{B}\nCOPY --from=1 / /x\n", 3),
    ],
)
def test_a_from_that_is_no_earlier_stage_is_refused(text: str, line: int) -> None:
    with pytest.raises(SpecError, match="not built before this step") as caught:
        parse_dockerfile(text, "Dockerfile")
    assert caught.value.line == line


def test_plain_steps_have_no_stage_to_copy_from() -> None:
    with pytest.raises(SpecError, match="not built before this step"):
        parse_docker_steps("COPY --from=0 / /x\n", "spec.yml")


def test_an_image_a_step_copies_from_is_written_in_full_for_the_engine() -> None:
    head = f"base_image: debian@{B}\ndocker_steps: |\n"
    plain = complete_spec(parse_spec_text(head + "  COPY --from=cafe / /x\n", "s.yml"))
    assert plain.dockerfile_lines("env")[1] == "COPY --from=docker.io/library/cafe:latest / /x"
    staged = _spec(
        f"FROM a@{A} AS tools\nFROM b@{B}\nCOPY --from=tools / /t\nCOPY --from=cafe / /c\n"
    )
    lines = staged.dockerfile_lines("env")
    assert lines[-2:] == [
        "COPY --from=tools / /t",
        "COPY --from=docker.io/library/cafe:latest / /c",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "ONBUILD COPY --from=victim/image:1 / /loot\n",
        "ONBUILD ADD --from=0 / /loot\n",
        "ONBUILD RUN --mount=type=bind,from=x,target=/v true\n",
    ],
)
def test_an_onbuild_trigger_that_reads_an_image_is_refused(text: str) -> None:
    with pytest.raises(SpecError, match=r"ONBUILD \w+ --\w+ is not supported"):
        parse_steps(text, "spec.yml")


def test_build_arguments_that_expand_past_the_limit_are_refused_at_once() -> None:
    doubling = f"ARG A={'x' * 1000}\nARG B={'$A' * 100}\nARG C={'$B' * 100}\n"
    with pytest.raises(SpecError, match="build arguments expand to more than") as caught:
        parse_dockerfile(doubling + f"FROM a@{A}\nARG C\n", "Dockerfile")
    assert caught.value.line == 2  # B is already 100 kB: stopped there, C is never made
    copies = f"ARG A={'x' * 10_000}\nFROM a@{A}\n" + "ARG A\n" * 200
    with pytest.raises(SpecError, match="1,048,576 bytes"):
        parse_dockerfile(copies, "Dockerfile")


def test_stages_and_their_images_are_bounded() -> None:
    many = "".join(f"FROM a@{A} AS s{n}\n" for n in range(40))
    with pytest.raises(SpecError, match="40 stages; envctl builds at most 32") as caught:
        parse_dockerfile(many, "Dockerfile")
    assert caught.value.line == 33
    images = "".join(f"FROM img{n}@{A} AS s{n}\n" for n in range(20))
    with pytest.raises(SpecError, match="from 20 images"):
        parse_dockerfile(images, "Dockerfile")


def test_a_platform_on_the_environments_stage_is_the_specs_to_say() -> None:
    with pytest.raises(SpecError, match="set it there"):
        parse_docker_steps("FROM --platform=linux/arm64 base_image\nRUN true\n", "spec.yml")


def test_a_line_that_is_only_a_continuation_is_an_error_not_a_crash() -> None:
    with pytest.raises(SpecError, match="line continuation") as caught:
        parse_steps("RUN true\n\\\n", "spec.yml")
    assert caught.value.line == 2


def test_only_the_last_stages_chain_makes_layers_of_the_image() -> None:
    text = (
        f"FROM a@{A} AS build\n"
        + "RUN x\n" * 90
        + f"FROM b@{B} AS env\nRUN y\nFROM env\nCOPY --from=build / /\n"
    )
    spec = _spec(text)
    assert [s.instruction for s in spec.image_steps()] == ["COPY", "RUN"]
