"""Docker steps, read by Docker's own Dockerfile parser.

Two step lists are equal exactly when BuildKit's parser reads them as the same instructions:
comments, blank lines, line continuations, the case of the instruction word and the whitespace
between words outside a quoted or shell-form argument do not count; anything inside a shell-form
argument (`RUN echo "a  b"`) does. We call the real parser (the `dockerfile` package wraps
moby/buildkit's Go code) instead of imitating it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from json import dumps as json_dumps
from typing import Any

import hashing.goparse as goparse
from hashing.errors import SpecError

MAX_STEPS = 1000  # instructions in one spec's docker steps or Dockerfile
MAX_LINE = 1 << 16  # bytes: the Go parser's line buffer (a longer line reads as no line at all)

_INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL",
        "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip


# An ONBUILD whose sub-instruction has flags: Docker's parser keeps no trace of them.
_ONBUILD_SUB_FLAGS = re.compile(r"(?is)\s*onbuild\s+(?:--\S+\s+)*[a-z]+\s+--\S")


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
    source: str = field(default="", compare=False)  # the file it was read from

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

    def image_flags(self) -> Iterator[tuple[str, str]]:
        """The images this step's flags name, as (flag, value): `--from` of COPY/ADD (an image
        or a stage index), `--mount from` of a RUN mount; ONBUILD's by its sub-instruction."""
        kind = self.sub_instruction or self.instruction
        for flag in self.flags:
            name, _, value = flag.partition("=")
            if name == "--from" and kind in ("COPY", "ADD"):
                yield "--from", value
            elif name == "--mount" and kind == "RUN":
                for option in value.split(","):
                    key, _, item = option.partition("=")
                    if key.strip().lower() == "from":
                        yield "--mount from", item.strip()

    def dockerfile_line(self) -> str:
        """The instruction written from its parsed form, for a generated Dockerfile.

        Contract: `parse_steps(step.dockerfile_line()) == (step,)`, and equal steps give the same
        text (`RUN    echo x` and `run echo x` both render `RUN echo x`). Shell form is
        `RUN <flags> <arg>`, JSON form `CMD ["a", "b"]`, ENV/LABEL `ENV K=V K2=V2` with values
        as Docker's parser kept them (quotes and escapes included; the old form `ENV K some
        words` stays in that form, since quoting the value would change what the parser keeps),
        heredocs as the first line followed by each body and its terminator.

        Each rendering is checked by re-parsing it, falling back to `original`. (What the
        parsed form cannot hold at all, ONBUILD's sub-flags and heredocs and non-ASCII flags, is
        refused when the steps are parsed.) A step that ends in a lone escape character raises
        SpecError: it parses that way only as the last line of its text (`RUN a \\ \\` at the
        very end reads as `a \\`), and the same text followed by another instruction would run
        on into it. So does a step read under a `# escape=` directive that the default escape
        character reads differently.
        """
        candidates = list(_renderings(self))
        if self.original:
            candidates.append(self.original)
        for text in candidates:
            if _reads_back(text, self):
                return text
        raise SpecError(
            f"this {self.instruction} cannot be written into a Dockerfile so that it reads the "
            "same: it ends in a line continuation or needs its `# escape=` directive",
            line=self.line or None,
        )


def parse_steps(text: str, source: str, *, first_line: int = 1) -> tuple[DockerStep, ...]:
    """Parse Dockerfile instructions that run on top of a base image (no FROM allowed).

    `first_line` is the line of `text`'s first line in `source`, so errors point into the file.
    """
    steps = parse_instructions(text, source, first_line)
    for step in steps:
        if step.instruction == "FROM":
            raise SpecError(
                "docker steps cannot contain FROM: the base image is set by base_image",
                source=source,
                line=step.line,
            )
    return steps


def parse_instructions(text: str, source: str, first_line: int) -> tuple[DockerStep, ...]:
    """Every instruction of `text`, FROM included, read by Docker's parser; `first_line` is
    where `text` starts in `source`."""
    lines = text.splitlines()
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        return ()  # blank, or every step commented out: no steps (the parser calls it an error)
    for n, physical in enumerate(lines):
        if len(physical) > MAX_LINE // 4 and len(physical.encode()) >= MAX_LINE:
            raise SpecError(
                f"line is {len(physical.encode()):,} bytes long; Docker's parser reads lines of up "
                f"to {MAX_LINE - 1:,} bytes (split it with a line continuation)",
                source=source,
                line=n + first_line,
            )
    try:
        commands = goparse.parse(text)
    except goparse.ParseError as exc:
        line = _error_line(text, str(exc))
        raise SpecError(
            f"invalid Dockerfile instruction: {exc}",
            source=source,
            line=None if line is None else line + first_line - 1,
        ) from None
    except goparse.ParseTimeout as exc:
        raise SpecError(f"the Dockerfile could not be read: {exc}", source=source) from None
    except UnicodeDecodeError:
        # the Go parser splits flags byte by byte and can cut a multi-byte character in two
        raise SpecError(
            "an instruction's --flags must be ASCII", source=source, line=first_line
        ) from None
    if len(commands) > MAX_STEPS:
        raise SpecError(
            f"{len(commands):,} instructions; envctl builds at most {MAX_STEPS:,}",
            source=source,
            line=commands[MAX_STEPS].start_line + first_line - 1,
        )
    return tuple(_step(cmd, source, cmd.start_line + first_line - 1) for cmd in commands)


def _step(cmd: goparse.Command, source: str, line: int) -> DockerStep:
    """One parsed command as a DockerStep, checked: SpecError at `line` for what is refused."""
    if not cmd.cmd:  # a line that is only a line continuation, with nothing after it
        raise SpecError("a line continuation with no instruction after it", source=source,
                        line=line)  # fmt: skip
    instruction = cmd.cmd.upper()
    if instruction not in _INSTRUCTIONS and instruction != "FROM":
        raise SpecError(f"unknown instruction {cmd.cmd!r}", source=source, line=line)
    if not cmd.value:
        raise SpecError(f"{instruction} needs arguments", source=source, line=line)
    flags = tuple(cmd.flags)
    if instruction == "ONBUILD":
        flags = _onbuild_flags(cmd.original, source, line) or flags
    if not all(flag.isascii() for flag in flags):
        raise SpecError("an instruction's --flags must be ASCII", source=source, line=line)
    args = tuple(cmd.value)
    if instruction == "HEALTHCHECK":  # Docker reads its CMD/NONE word in any case
        args = (args[0].upper(), *args[1:])
    return DockerStep(
        instruction=instruction,
        flags=flags,
        json=bool(cmd.json),
        args=args,
        sub_instruction=cmd.sub_cmd.upper() if cmd.sub_cmd else None,
        heredocs=tuple((h.name, h.content) for h in cmd.heredocs),
        line=line,
        original=cmd.original,
        source=source,
    )


def _onbuild_flags(original: str, source: str, line: int) -> tuple[str, ...]:
    """An ONBUILD trigger's own flags, which Docker's parser drops (Docker stores the trigger's
    text): read from the trigger alone, so they are keyed and policed like any step's. One that
    reads an image is refused: it runs in whatever build uses the image as a base, where this
    spec's stages mean nothing and its reads are nobody's to check. So is a heredoc, whose body
    the parser drops too (two different triggers would read as one)."""
    if "<<" in original:
        raise SpecError("ONBUILD with a heredoc is not supported", source=source, line=line)
    if not _ONBUILD_SUB_FLAGS.match(original):
        return ()
    trigger = _trigger(original, source, line)
    for flag in trigger.flags:
        if flag.partition("=")[0] in ("--from", "--mount"):
            raise SpecError(
                f"ONBUILD {trigger.instruction} {flag.partition('=')[0]} is not supported: a "
                "trigger reads images where the image is used, unchecked",
                source=source,
                line=line,
                field=f"ONBUILD {trigger.instruction} --from",
            )
    return trigger.flags


def _trigger(original: str, source: str, line: int) -> DockerStep:
    """An ONBUILD's trigger, read as the instruction it is."""
    text = re.sub(r"(?is)^\s*onbuild\s+", "", original, count=1)
    (step,) = parse_instructions(text, source, line)
    if step.instruction in ("ONBUILD", "FROM", "MAINTAINER"):
        raise SpecError(f"ONBUILD {step.instruction} is not allowed", source=source, line=line)
    return step


def _error_line(text: str, message: str) -> int | None:
    """Find the line the Go parser failed on (it does not say): the shortest prefix of lines
    that fails with the same message, by bisection (a prefix that holds the bad line fails
    with its message, one that does not, does not), so a few parses whatever the length."""
    lines = text.splitlines(keepends=True)

    def fails(end: int) -> bool:
        try:
            goparse.parse("".join(lines[:end]))
        except goparse.ParseError as exc:
            return str(exc) == message
        except (goparse.ParseTimeout, UnicodeDecodeError):
            return False
        return False

    low, high = 1, len(lines)  # the answer is in [low, high] when the whole text fails
    if not fails(high):
        return None
    while low < high:
        middle = (low + high) // 2
        if fails(middle):
            high = middle
        else:
            low = middle + 1
    return low


# ------------------------------------------------------------------- writing a step back as text

# Characters that end or open a word while Docker reads flags; escaped with a backslash.
_FLAG_SPECIAL = re.compile(r"""([\s"'\\])""")
# A line after the step, so a rendering that would run on into the next line is caught.
_SENTINEL = "USER envctl-sentinel"


def _renderings(step: DockerStep) -> Iterator[str]:
    """Texts written from the parsed form only, preferred first."""
    if step.sub_instruction is not None:  # ONBUILD: the flags are its trigger's
        head = " ".join([step.instruction, step.sub_instruction, *map(_flag, step.flags)])
    else:
        head = " ".join([step.instruction, *map(_flag, step.flags)])
    kind = step.sub_instruction or step.instruction
    yield f"{head} {_arguments(kind, step.json, step.args)}" + "".join(
        f"\n{body}{name}" for name, body in step.heredocs
    )
    if kind in ("ENV", "LABEL") and len(step.args) == 2:
        # The old form `ENV K some words`: its value may hold spaces that `K=V` would split.
        # Quoting it instead would change the parsed value (the parser keeps quotes).
        yield f"{head} {step.args[0]} {step.args[1]}"


def _arguments(instruction: str, json: bool, args: tuple[str, ...]) -> str:
    if json and instruction == "HEALTHCHECK":
        return f"{args[0]} {json_dumps(list(args[1:]), ensure_ascii=False)}"
    if json:
        return json_dumps(list(args), ensure_ascii=False)
    if instruction in ("ENV", "LABEL"):
        return " ".join(f"{k}={v}" for k, v in zip(args[::2], args[1::2], strict=True))
    # a shell form is one argument; COPY, EXPOSE, ARG, `HEALTHCHECK CMD …` are words
    return " ".join(args)


def _flag(flag: str) -> str:
    """A flag as Docker reads it back: `--name=value` with quotes, spaces and `\\` escaped."""
    return "--" + _FLAG_SPECIAL.sub(r"\\\1", flag[2:]) if flag.startswith("--") else flag


def dockerfile_lines(steps: Sequence[DockerStep]) -> list[str]:
    """`step.dockerfile_line()` of each step, checked with one parse of them all (a server's
    parser runs in a child process: a check per step would cost a round trip per step);
    when that parse does not read every step back, each is written and checked alone."""
    if not steps:
        return []
    texts = [next(_renderings(step)) for step in steps]
    try:
        parsed = parse_instructions("\n".join([*texts, _SENTINEL]), "<rendered>", 1)
    except (SpecError, UnicodeDecodeError):
        parsed = ()
    if list(parsed[:-1]) == list(steps) and parsed[-1:] and parsed[-1].original == _SENTINEL:
        return texts
    return [step.dockerfile_line() for step in steps]


def _reads_back(text: str, step: DockerStep) -> bool:
    try:
        parsed = parse_instructions(f"{text}\n{_SENTINEL}", "<rendered>", 1)
    except (SpecError, UnicodeDecodeError):
        # the parser splits flags byte by byte; a non-ASCII flag can leave invalid UTF-8
        return False
    return len(parsed) == 2 and parsed[0] == step and parsed[1].original == _SENTINEL
