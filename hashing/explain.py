"""What went into a key, and what differs between two specs: readable, pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hashing.dockersteps import DockerStep
from hashing.key import canonical_inputs
from hashing.spec import EnvironmentSpec
from hashing.stages import Stage


@dataclass(frozen=True)
class Difference:
    """One input that differs between two specs: what only the left and only the right has."""

    input: str
    left: tuple[str, ...]
    right: tuple[str, ...]


def describe(spec: EnvironmentSpec) -> list[tuple[str, list[str]]]:
    """The key's inputs as (input, lines) pairs, in the order a person reads a spec."""
    inputs = canonical_inputs(spec)
    return [(name, _lines(spec, name, inputs)) for name in _INPUTS]


def diff(left: EnvironmentSpec, right: EnvironmentSpec) -> list[Difference]:
    """Exactly which inputs differ; an empty list means the same key."""
    a_inputs, b_inputs = canonical_inputs(left), canonical_inputs(right)
    out = []
    for name in _INPUTS:
        if _canonical(a_inputs, name) == _canonical(b_inputs, name):
            continue
        a, b = _lines(left, name, a_inputs), _lines(right, name, b_inputs)
        if a == b:  # the readable form hides the difference (a heredoc body): show the inputs
            a = [json.dumps(_canonical(a_inputs, name), sort_keys=True)]
            b = [json.dumps(_canonical(b_inputs, name), sort_keys=True)]
        if name in _ORDERED:  # order is meaning here: show both sides whole
            out.append(Difference(name, tuple(a), tuple(b)))
        else:
            only_b, only_a = set(b), set(a)
            out.append(
                Difference(
                    name,
                    tuple(x for x in a if x not in only_b),
                    tuple(x for x in b if x not in only_a),
                )
            )
    return out


def _canonical(inputs: dict[str, Any], name: str) -> Any:
    """The canonical value of one input (`conda.pip` is inside `conda`)."""
    if name.startswith("conda."):
        return (inputs["conda"] or {}).get(name.split(".", 1)[1])
    if name == "docker_steps":  # a multi-stage spec's steps are its stages'
        return [inputs["docker_steps"], inputs.get("stages")]
    return inputs[name]


_INPUTS = (
    "base_image",
    "platform",
    "conda.channels",
    "conda.dependencies",
    "conda.pip",
    "conda.pip_options",
    "variables",
    "docker_steps",
    "context",
)
_ORDERED = frozenset({"conda.channels", "conda.pip_options", "docker_steps"})


def _lines(spec: EnvironmentSpec, name: str, inputs: dict[str, Any]) -> list[str]:
    if name == "base_image":
        base = spec.base_image
        if base.digest is None:
            return [f"{base.name}:{base.tag}  (unpinned: the tag was not resolved to a digest)"]
        return [f"{base.name}@{base.digest}"]
    if name == "platform":
        return [spec.platform]
    if name.startswith("conda."):
        conda = inputs["conda"] or {}
        return list(conda.get(name.split(".", 1)[1], []))
    if name == "variables":
        return [f"{k}={v}" for k, v in spec.variables]
    if name == "docker_steps":
        lines = [_step_text(step) for step in spec.docker_steps]
        for stage in spec.stages:
            lines += [_stage_text(stage), *(_step_text(step) for step in stage.steps)]
        return lines
    entries = spec.context.entries if spec.context is not None else ()
    return [
        f"{e.path}  {e.kind} {e.mode:04o}" + (f" {e.digest}" if e.digest else "") for e in entries
    ]


def _stage_text(stage: Stage) -> str:
    start = "base_image + environment" if stage.is_environment else stage.parent or stage.image
    return f"FROM {start}" + (f" AS {stage.name}" if stage.name else "")


def _step_text(step: DockerStep) -> str:
    words = [
        step.instruction,
        *([step.sub_instruction] if step.sub_instruction else []),
        *step.flags,
    ]
    words.append(json.dumps(list(step.args)) if step.json else " ".join(step.args))
    return " ".join(words) + (f"  (+{len(step.heredocs)} heredoc)" if step.heredocs else "")
