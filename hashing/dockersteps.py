"""Docker steps, read by Docker's own Dockerfile parser.

Two step lists are equal exactly when BuildKit's parser reads them as the same instructions:
comments, blank lines, line continuations, the case of the instruction word and the whitespace
between words outside a quoted or shell-form argument do not count; anything inside a shell-form
argument (`RUN echo "a  b"`) does. We call the real parser (the `dockerfile` package wraps
moby/buildkit's Go code) instead of imitating it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dockerfile

from hashing.errors import SpecError
from hashing.imageref import ImageName, InvalidReference, normalize_platform, parse_image

_INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL",
        "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip


@dataclass(frozen=True)
class DockerStep:
    """One parsed Dockerfile instruction.

    Equality and the key use the parsed form only; `line` and `original` say where it came from.
    """

    instruction: str
    flags: tuple[str, ...]
    json: bool
    args: tuple[str, ...]
    sub_instruction: str | None = None
    heredocs: tuple[tuple[str, str], ...] = ()
    line: int = field(default=0, compare=False)
    original: str = field(default="", compare=False)

    def canonical(self) -> list[Any]:
        """The key's view of this instruction."""
        return [
            self.instruction,
            self.sub_instruction,
            list(self.flags),
            self.json,
            list(self.args),
            [list(h) for h in self.heredocs],
        ]


@dataclass(frozen=True)
class ParsedDockerfile:
    """A single-stage Dockerfile split the way envctl uses it: base image, platform, steps."""

    base_image: ImageName
    base_line: int
    platform: str | None
    steps: tuple[DockerStep, ...]


def parse_steps(text: str, source: str, *, first_line: int = 1) -> tuple[DockerStep, ...]:
    """Parse Dockerfile instructions that run on top of a base image (no FROM allowed).

    `first_line` is the line of `text`'s first line in `source`, so errors point into the file.
    """
    steps = _parse(text, source, first_line)
    for step in steps:
        if step.instruction == "FROM":
            raise SpecError(
                "docker steps cannot contain FROM: the base image is set by base_image",
                source=source,
                line=step.line,
            )
    return steps


def parse_dockerfile(text: str, source: str) -> ParsedDockerfile:
    """Split a single-stage Dockerfile into its base image and the steps after FROM."""
    commands = _parse(text, source, 1)
    froms = [i for i, c in enumerate(commands) if c.instruction == "FROM"]
    if not froms:
        raise SpecError("the Dockerfile has no FROM instruction", source=source)
    if len(froms) > 1:
        raise SpecError(
            "multi-stage Dockerfiles are not supported: envctl installs the environment on top "
            "of a single base image",
            source=source,
            line=commands[froms[1]].line,
        )
    for before in commands[: froms[0]]:
        if before.instruction != "ARG":
            raise SpecError(f"{before.instruction} before FROM", source=source, line=before.line)
    frm = commands[froms[0]]
    if "$" in " ".join(frm.args + frm.flags):
        raise SpecError(
            "FROM uses a build argument; envctl needs the base image written out",
            source=source,
            line=frm.line,
        )
    if len(frm.args) not in (1, 3) or (len(frm.args) == 3 and frm.args[1].upper() != "AS"):
        raise SpecError("FROM takes IMAGE [AS NAME]", source=source, line=frm.line)
    platform = None
    for flag in frm.flags:
        name, _, value = flag.partition("=")
        if name != "--platform":
            raise SpecError(f"unsupported FROM flag {name}", source=source, line=frm.line)
        try:
            platform = normalize_platform(value)
        except InvalidReference as exc:
            raise SpecError(str(exc), source=source, line=frm.line, field="FROM") from None
    try:
        base = parse_image(frm.args[0])
    except InvalidReference as exc:
        raise SpecError(str(exc), source=source, line=frm.line, field="FROM") from None
    return ParsedDockerfile(base, frm.line, platform, commands[froms[0] + 1 :])


def _parse(text: str, source: str, first_line: int) -> tuple[DockerStep, ...]:
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        return ()  # blank, or every step commented out: no steps (the parser calls it an error)
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        line = _error_line(text, str(exc))
        raise SpecError(
            f"invalid Dockerfile instruction: {exc}",
            source=source,
            line=None if line is None else line + first_line - 1,
        ) from None
    steps = []
    for cmd in commands:
        line = cmd.start_line + first_line - 1
        instruction = cmd.cmd.upper()
        if instruction not in _INSTRUCTIONS and instruction != "FROM":
            raise SpecError(f"unknown instruction {cmd.cmd!r}", source=source, line=line)
        if not cmd.value:
            raise SpecError(f"{instruction} needs arguments", source=source, line=line)
        args = tuple(cmd.value)
        if instruction == "HEALTHCHECK":  # Docker reads its CMD/NONE word in any case
            args = (args[0].upper(), *args[1:])
        steps.append(
            DockerStep(
                instruction=instruction,
                flags=tuple(cmd.flags),
                json=bool(cmd.json),
                args=args,
                sub_instruction=cmd.sub_cmd.upper() if cmd.sub_cmd else None,
                heredocs=tuple((h.name, h.content) for h in cmd.heredocs),
                line=line,
                original=cmd.original,
            )
        )
    return tuple(steps)


def _error_line(text: str, message: str) -> int | None:
    """Find the line the Go parser failed on (it does not say): the shortest failing prefix."""
    lines = text.splitlines(keepends=True)
    for end in range(1, len(lines) + 1):
        try:
            dockerfile.parse_string("".join(lines[:end]))
        except dockerfile.GoParseError as exc:
            if str(exc) == message:
                return end
    return None
