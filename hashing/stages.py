"""Whole Dockerfiles: stages, `FROM` through build arguments, and what the classic builder lacks.

A Dockerfile is a list of stages, each opened by `FROM IMAGE [AS NAME]` (or `FROM STAGE`, an
earlier stage by name). Docker's final image is the last stage. envctl installs the environment
on the image at the root of that stage's chain: that stage, the *environment's stage*, starts
from the base image with the environment on it, and every other stage is built as written. A
Dockerfile of one stage reads as it always has: a base image and the steps after its FROM.

The build arguments declared before the first FROM, with their defaults, fill every FROM line,
and a stage's bare `ARG NAME` inherits the default, as Docker applies them (envctl passes no
`--build-arg`), so the key holds the values and the Dockerfile envctl writes needs no global ARG.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from hashing.dockersteps import DockerStep, dockerfile_lines, parse_instructions
from hashing.errors import SpecError
from hashing.imageref import ImageName, InvalidReference, normalize_platform, parse_image

SCRATCH = "scratch"  # FROM scratch: an empty filesystem, no image to pull
MAX_STAGES = 32  # stages in one Dockerfile; each FROM image is pinned, confirmed and pulled
MAX_IMAGES = 16  # distinct images the stages start from
MAX_VALUE = 1 << 16  # bytes of one build argument's value, once expanded (a line's worth)
MAX_EXPANDED = 1 << 20  # bytes the build arguments' values add to a spec, all told
ENVIRONMENT = "base_image"  # in envctl's docker_steps, the FROM of the environment's stage
# Docker's rule for stage names (moby/buildkit's instructions.parse: validStageName)
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<bare>\w+))")
# Flags the classic builder (the docker SDK's, Docker 20.10's) reads; any other is BuildKit's.
_CLASSIC_FLAGS = {
    "FROM": {"--platform"},
    "COPY": {"--from", "--chown"},
    "ADD": {"--chown"},
    "HEALTHCHECK": {"--interval", "--timeout", "--start-period", "--retries"},
}


@dataclass(frozen=True)
class Stage:
    """One stage of a multi-stage Dockerfile.

    It starts from `image`, or from `parent` (an earlier stage's name, or `scratch`), or, when
    both are None, from the base image with the environment on it: the environment's stage.
    `name` is its `AS` name, lower-cased as Docker compares them."""

    image: ImageName | None
    parent: str | None
    name: str | None
    platform: str | None
    steps: tuple[DockerStep, ...]
    line: int = field(default=0, compare=False)
    source: str = field(default="", compare=False)

    @property
    def is_environment(self) -> bool:
        """True for the stage envctl installs the environment under."""
        return self.image is None and self.parent is None

    def canonical(self) -> dict[str, Any]:
        """The key's view of this stage."""
        return {
            "from": self.image.canonical() if self.image is not None else self.parent,
            "name": self.name,
            "platform": self.platform,
            "steps": [step.canonical() for step in self.steps],
        }

    def dockerfile_lines(self, environment: str, earlier: frozenset[str]) -> Iterator[str]:
        """The stage written out, `environment` being the reference of the environment's image
        and `earlier` the names of the stages before it; a stage's image by name and digest,
        so the engine builds exactly what was keyed, and every image a step copies from by its
        full name (`qualified_sources`)."""
        start = environment if self.is_environment else self.parent or str(self.image)
        flags = f"--platform={self.platform} " if self.platform else ""
        yield f"FROM {flags}{start}" + (f" AS {self.name}" if self.name else "")
        yield from dockerfile_lines([qualified_sources(step, earlier) for step in self.steps])


def qualified_sources(step: DockerStep, stages: frozenset[str]) -> DockerStep:
    """`step` with each image its `--from` names written in full (`busybox` as
    `docker.io/library/busybox:latest`): the classic builder reads a short name that is no
    stage as an image, and finds it among the engine's images by a prefix of their ids, where
    another workspace's image may be; a full name is only ever a name. The same image, so the
    same step to the key."""
    if not any(flag.startswith("--from=") for flag in step.flags):
        return step
    flags = []
    for flag in step.flags:
        name, _, value = flag.partition("=")
        if name == "--from" and not value.isdigit() and value.lower() not in stages:
            try:
                flag = f"--from={parse_image(value)}"
            except InvalidReference as exc:
                raise SpecError(str(exc), source=step.source or None, line=step.line or None,
                                field=f"{step.instruction} --from") from None  # fmt: skip
        flags.append(flag)
    return replace(step, flags=tuple(flags), original="")


@dataclass(frozen=True)
class ParsedDockerfile:
    """A Dockerfile split the way envctl uses it: the base image the environment goes on, its
    platform, and the steps after that FROM; or, with several stages, every stage in order (the
    environment's among them) and no `steps` of its own."""

    base_image: ImageName
    platform: str | None
    steps: tuple[DockerStep, ...]
    source: str = ""
    from_line: int | None = None
    stages: tuple[Stage, ...] = ()


def parse_dockerfile(text: str, source: str) -> ParsedDockerfile:
    """Read a Dockerfile as Docker does; the environment goes on the root of the last stage."""
    commands = parse_instructions(text, source, 1)
    stages = _stages(commands, source)
    if not stages:
        raise SpecError("the Dockerfile has no FROM instruction", source=source)
    root = _root(stages, len(stages) - 1)
    if stages[root].parent == SCRATCH:  # read as an image named scratch, as it always was
        stages[root] = replace(stages[root], image=parse_image(SCRATCH), parent=None)
    return _split(stages, root, source)


def parse_docker_steps(
    text: str, source: str, *, first_line: int = 1
) -> tuple[tuple[DockerStep, ...], tuple[Stage, ...]]:
    """envctl's `docker_steps`: (steps, ()) for plain steps, or ((), stages) when they hold
    stages: earlier ones `FROM IMAGE AS NAME`, the environment's opened by `FROM base_image`."""
    commands = parse_instructions(text, source, first_line)
    if not any(c.instruction == "FROM" for c in commands):
        check_references([Stage(None, None, None, None, commands)], source)
        return commands, ()
    stages = _stages(commands, source, environment=ENVIRONMENT)
    marked = [i for i, s in enumerate(stages) if s.is_environment]
    if len(marked) != 1:
        raise SpecError(
            f"docker_steps with stages open the environment's stage with `FROM {ENVIRONMENT}`, "
            f"once; found {len(marked)}",
            source=source,
            line=stages[marked[1]].line if marked else stages[0].line,
        )
    if stages[marked[0]].platform is not None:
        raise SpecError(
            f"FROM --platform on `FROM {ENVIRONMENT}`: the environment is built for the spec's "
            "`platform:`; set it there",
            source=source,
            line=stages[marked[0]].line,
        )
    if _root(stages, len(stages) - 1) != marked[0]:
        raise SpecError(
            f"the last stage must be the `FROM {ENVIRONMENT}` stage or start from it: the "
            "environment goes under the image the steps make",
            source=source,
            line=stages[-1].line,
        )
    return (), tuple(stages)


def classic_builder_refusal(steps: tuple[DockerStep, ...]) -> SpecError | None:
    """The error for the first step that needs BuildKit (`RUN --mount`, `COPY --chmod`,
    `COPY --link`, a heredoc, …), which envctl's engine, the classic builder, cannot build;
    None when every step builds there."""
    for step in steps:
        kind = step.sub_instruction or step.instruction
        allowed = _CLASSIC_FLAGS.get(kind, set())
        feature = next(
            (f"{kind} {name}" for name in _flag_names(step) if name not in allowed),
            f"a heredoc in {kind}" if step.heredocs else None,
        )
        if feature is not None:
            return SpecError(
                f"{feature} is a BuildKit feature; envctl runs docker steps on the classic "
                "builder, which cannot build it (the step is read and keyed, not built)",
                source=step.source or None,
                line=step.line or None,
                field=kind,
            )
    return None


def _flag_names(step: DockerStep) -> Iterator[str]:
    return (flag.partition("=")[0] for flag in step.flags)


def _stages(
    commands: tuple[DockerStep, ...], source: str, *, environment: str | None = None
) -> list[Stage]:
    """Every stage in order; `environment` is the FROM word that marks the environment's."""
    froms = [i for i, c in enumerate(commands) if c.instruction == "FROM"]
    if not froms:
        return []
    for before in commands[: froms[0]]:
        if before.instruction != "ARG":
            raise SpecError(f"{before.instruction} before FROM", source=source, line=before.line)
    if len(froms) > MAX_STAGES:
        raise SpecError(
            f"{len(froms)} stages; envctl builds at most {MAX_STAGES}",
            source=source,
            line=commands[froms[MAX_STAGES]].line,
        )
    budget = _Budget(source)
    meta = _meta_args(commands[: froms[0]], budget)
    defaults = {k: v for k, v in meta.items() if v is not None}
    stages: list[Stage] = []
    for n, start in enumerate(froms):
        end = froms[n + 1] if n + 1 < len(froms) else len(commands)
        frm = commands[start]
        if "$" in " ".join(frm.args + frm.flags):
            frm = replace(
                frm,
                args=tuple(_expand(a, meta, budget, frm.line) for a in frm.args),
                flags=tuple(_expand(f, meta, budget, frm.line) for f in frm.flags),
            )
        steps = tuple(_inherit_defaults(s, defaults, budget) for s in commands[start + 1 : end])
        stages.append(_stage(frm, steps, stages, source, environment))
    images = {s.image for s in stages if s.image is not None}
    if len(images) > MAX_IMAGES:
        raise SpecError(
            f"the stages start from {len(images)} images; envctl builds from at most {MAX_IMAGES}",
            source=source,
        )
    check_references(stages, source)
    return stages


def check_references(stages: list[Stage] | tuple[Stage, ...], source: str) -> None:
    """A step's `--from` may name an earlier stage (by name or index) or an image, never its
    own stage or a later one: the classic builder knows a stage's name only once it is built,
    and reads any other name as an image, found among the engine's images by a prefix of
    their ids (another workspace's included). BuildKit refuses such a cycle too."""
    names = [s.name for s in stages]
    for index, stage in enumerate(stages):
        for step in stage.steps:
            for flag, value in step.image_flags():
                later = value.lower() in names[index:] and value.lower() not in names[:index]
                if later or (value.isdigit() and int(value) >= index):
                    raise SpecError(
                        f"{step.instruction} {flag}={value} names stage {value}, which is not "
                        "built before this step: only an earlier stage can be copied from",
                        source=step.source or source,
                        line=step.line or None,
                        field=f"{step.instruction} {flag}",
                    )


def _stage(
    frm: DockerStep,
    steps: tuple[DockerStep, ...],
    earlier: list[Stage],
    source: str,
    environment: str | None,
) -> Stage:
    if len(frm.args) not in (1, 3) or (len(frm.args) == 3 and frm.args[1].upper() != "AS"):
        raise SpecError("FROM takes IMAGE [AS NAME]", source=source, line=frm.line)
    name = frm.args[2].lower() if len(frm.args) == 3 else None
    if name is not None and (not _STAGE_NAME.match(name) or name == SCRATCH):
        raise SpecError(
            f"invalid name for a build stage: {frm.args[2]!r} (a letter, then letters, digits, "
            "'-', '_' or '.')",
            source=source,
            line=frm.line,
        )
    if name is not None and any(s.name == name for s in earlier):
        raise SpecError(f"duplicate stage name {name!r}", source=source, line=frm.line)
    platform = None
    for flag in frm.flags:
        flag_name, _, value = flag.partition("=")
        if flag_name != "--platform":
            raise SpecError(f"unsupported FROM flag {flag_name}", source=source, line=frm.line)
        try:
            platform = normalize_platform(value)
        except InvalidReference as exc:
            raise SpecError(str(exc), source=source, line=frm.line, field="FROM") from None
    target = frm.args[0]
    image = parent = None
    if target == environment:
        pass  # the environment's stage
    elif target.lower() == SCRATCH or any(s.name == target.lower() for s in earlier):
        parent = target.lower()
    else:
        try:
            image = parse_image(target)
        except InvalidReference as exc:
            raise SpecError(str(exc), source=source, line=frm.line, field="FROM") from None
    return Stage(image, parent, name, platform, steps, frm.line, source)


def _root(stages: list[Stage], index: int) -> int:
    """The stage at the root of `index`'s chain of `FROM STAGE`s."""
    while stages[index].parent not in (None, SCRATCH):
        index = next(i for i, s in enumerate(stages[:index]) if s.name == stages[index].parent)
    return index


def _split(stages: list[Stage], root: int, source: str) -> ParsedDockerfile:
    base = stages[root]
    assert base.image is not None  # the root of a chain starts from an image or scratch
    if len(stages) == 1:
        return ParsedDockerfile(base.image, base.platform, base.steps, source, base.line)
    marked = replace(base, image=None)
    return ParsedDockerfile(
        base.image,
        base.platform,
        (),
        source,
        base.line,
        tuple(marked if i == root else s for i, s in enumerate(stages)),
    )


class _Budget:
    """What expanding build arguments may add to a spec: a value may not pass MAX_VALUE, nor
    all of them MAX_EXPANDED (a default made of others, `ARG B=$A$A$A…`, doubles with each
    line, and a bare `ARG A` in every stage copies it again)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._left = MAX_EXPANDED

    def spend(self, value: str, line: int) -> str:
        """`value`, counted; SpecError at `line` past either limit."""
        self._left -= len(value)
        if len(value) > MAX_VALUE or self._left < 0:
            limit = MAX_VALUE if len(value) > MAX_VALUE else MAX_EXPANDED
            raise SpecError(
                f"build arguments expand to more than {limit:,} bytes here; write the value out",
                source=self.source,
                line=line,
            )
        return value


def _meta_args(before_from: tuple[DockerStep, ...], budget: _Budget) -> dict[str, str | None]:
    """The build arguments declared before the first FROM, by name: each default (expanded
    with those declared before it, as Docker reads them), or None for one without."""
    meta: dict[str, str | None] = {}
    for step in before_from:
        for arg in step.args:
            name, eq, value = arg.partition("=")
            # as Docker's lexer reads a default: a name without a value is empty
            meta[name] = _expand(value, meta, budget, step.line, strict=False) if eq else None
    return meta


def _expand(
    text: str, meta: dict[str, str | None], budget: _Budget, line: int, *, strict: bool = True
) -> str:
    """`text` with `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}` replaced from
    `meta`; when `strict` (a FROM), SpecError for a name without a value (envctl passes no
    --build-arg, and Docker would pull an image named by what is left)."""

    made = [len(text)]  # what the expansion has grown to: stopped before it passes the limit

    def value(match: re.Match[str]) -> str:
        out = _value(match)
        made[0] += len(out)
        if made[0] > MAX_VALUE:
            budget.spend("x" * (MAX_VALUE + 1), line)  # raises, naming the limit
        return out

    def _value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        found = meta.get(name)
        if match.group("op") == "-":
            return found if found else match.group("word")
        if match.group("op") == "+":
            return match.group("word") if found else ""
        if found is None and not strict:
            return ""
        if found is None:
            why = "is not declared before FROM" if name not in meta else "has no default"
            raise SpecError(
                f"FROM uses the build argument {name}, which {why}; envctl passes no "
                "--build-arg, so give it a default or write the image out",
                source=budget.source,
                line=line,
            )
        return found

    if "$" not in text:
        return text
    return budget.spend(_VARIABLE.sub(value, text), line)


def _inherit_defaults(step: DockerStep, defaults: dict[str, str], budget: _Budget) -> DockerStep:
    """Write a global ARG's default into the stage's bare `ARG NAME`, as Docker applies it,
    so the key (and the Dockerfile envctl writes, which has no global ARG) carries it."""
    if step.instruction != "ARG" or not defaults:
        return step
    args = tuple(
        f"{arg}={budget.spend(defaults[arg], step.line)}"
        if "=" not in arg and arg in defaults
        else arg
        for arg in step.args
    )
    return step if args == step.args else replace(step, args=args)
