"""Validate a YAML document's shape with a pydantic model, reporting errors by file and line."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, StringConstraints, ValidationError

from hashing.yamldoc import Path, YamlDocument

M = TypeVar("M", bound=BaseModel)

VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
"""An environment variable name as Docker's ENV and a shell accept it."""


def _writable(value: str) -> str:
    if "\n" in value or "\x00" in value:
        raise ValueError("a value cannot hold a newline or NUL: a Dockerfile ENV cannot carry it")
    return value


VariableValue = Annotated[str, AfterValidator(_writable)]
"""An environment variable value that a Dockerfile can write exactly."""

_MESSAGES = {
    "missing": "required field is missing",
    "string_type": "must be a string (quote it in YAML)",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "string_pattern_mismatch": "invalid name: letters, digits and _, not starting with a digit",
}


def validate(doc: YamlDocument, model: type[M], at: Path = ()) -> M:
    """Validate the value at `at` in `doc` against `model`; raise the first error as SpecError."""
    value: Any = doc.value
    for part in at:
        value = value[part]
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        located = [(_real_path(value, err), err) for err in errors]
        path, err = min(located, key=lambda pe: doc.line_of((*at, *pe[0])) or 0)
        message = _message(err)
        if len(located) > 1:
            message += f" (and {len(located) - 1} more problem{'s' * (len(located) > 2)})"
        raise doc.error((*at, *path), message) from None


def _real_path(value: Any, err: Any) -> Path:
    """Keep the parts of a pydantic `loc` that index the data (drop union branch names)."""
    path: list[str | int] = []
    for part in err["loc"]:
        if (isinstance(value, dict) and part in value) or (
            isinstance(value, list) and isinstance(part, int) and part < len(value)
        ):
            value = value[part]
            path.append(part)
    if err["type"] == "missing":  # the loc names a key the data does not hold
        path.append(err["loc"][-1])
    return tuple(path)


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        key = err["loc"][-1]
        return f"unknown key {key!r}"
    if err["type"] == "literal_error":
        return f"must be one of {err['ctx']['expected']}"
    if err["type"] == "value_error":  # our own validators' messages, without pydantic's prefix
        return str(err["msg"]).removeprefix("Value error, ")
    return _MESSAGES.get(err["type"], str(err["msg"]))
