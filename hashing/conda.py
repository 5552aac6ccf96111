"""Conda environments: channels, match specs and pip requirements, normalized.

Normalization merges what conda and pip read the same way and nothing else:
- dependencies are a set: order and duplicates do not matter; each match spec is re-written by
  rattler's parser (`numpy >= 1.20` is `numpy >=1.20`, `numpy=1.20` is `numpy 1.20.*`),
  but `numpy=1.20` and `numpy==1.20` stay different because conda reads them differently;
- channels are a priority list: order matters, a repeated channel adds nothing;
- pip requirements are a set, each re-written by `packaging` with PEP 503 names
  (`Scikit_Learn` is `scikit-learn`); pip options (`--extra-index-url=…`) keep their order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field
from rattler import MatchSpec
from rattler.exceptions import InvalidMatchSpecError

from hashing.validate import VariableName, VariableValue, validate
from hashing.yamldoc import Path, YamlDocument, format_path

_NAME_TEXT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_NAME = re.compile(rf"^{_NAME_TEXT}$")
_SIMPLE_REQUIREMENT = re.compile(
    rf"^(?P<name>{_NAME_TEXT})\s*(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[<>=!~][^;@()]*)?$"
)
_FILE_OPTIONS = frozenset({"-r", "--requirement", "-c", "--constraint", "-e", "--editable"})
_PIP_OPTION = re.compile(r"^(?P<flag>--?[A-Za-z][\w-]*)(?:(?:\s*=\s*|\s+)(?P<value>.+))?$")
# The pip options a spec may carry: an allowlist, because pip runs on the builder host and most
# of its options name host files (`--log`, `--cert`, `--src`) or change what it trusts.
# Where packages come from is the operator's decision (ENVCTL_PIP_INDEX_URL, _FIND_LINKS): a
# spec's own sources are accepted, as conda's pip does, but never reach pip (see
# EnvironmentSpec.with_package_sources); the short forms are written long.
PIP_SOURCE_OPTIONS = frozenset(
    {"--index-url", "--extra-index-url", "--find-links", "--no-index", "--trusted-host"}
)
# options that change how pip resolves, passed to it as they are
PIP_RESOLVER_OPTIONS = frozenset({"--pre", "--prefer-binary"})
# options envctl always applies (wheels only, every download checked against its hash)
_PIP_IMPLIED_OPTIONS = frozenset({"--only-binary", "--require-hashes"})
_PIP_SHORT = {"-i": "--index-url", "-f": "--find-links"}
_PIP_VALUED = frozenset(
    {"--index-url", "--extra-index-url", "--find-links", "--trusted-host", "--only-binary"}
)


@dataclass(frozen=True)
class CondaEnvironment:
    """The normalized content of a conda environment file (its `name:` is not part of it)."""

    channels: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    pip_options: tuple[str, ...] = ()
    # the operator's pip sources, put in by EnvironmentSpec.with_package_sources (they are in
    # pip_options too, and so in the key): the only sources the builder gives pip
    pip_sources: tuple[str, ...] = field(default=(), compare=False)
    # where each URL requirement (`name @ https://…`, a bare URL) was written: (requirement,
    # file, line, field), so a policy that refuses one can point at it
    pip_urls: tuple[tuple[str, str, int | None, str], ...] = field(default=(), compare=False)

    @property
    def pip_arguments(self) -> tuple[str, ...]:
        """What the builder passes to pip besides requirements: the operator's sources and the
        spec's allowlisted resolver options, never a source or file the spec names."""
        resolver = (o for o in self.pip_options if pip_option_flag(o) in PIP_RESOLVER_OPTIONS)
        return (*self.pip_sources, *resolver)

    @property
    def empty(self) -> bool:
        """True when the environment installs nothing (its channels then do not matter)."""
        return not self.dependencies and not self.pip

    def canonical(self) -> dict[str, list[str]]:
        """The key's view of this environment."""
        return {
            "channels": list(self.channels),
            "dependencies": list(self.dependencies),
            "pip": list(self.pip),
            "pip_options": list(self.pip_options),
        }


def normalize_match_spec(text: str) -> str:
    """Re-write one conda match spec in rattler's canonical form; ValueError when invalid."""
    if not text.strip():
        raise ValueError("empty match spec")
    try:
        return str(MatchSpec(text.strip()))
    except InvalidMatchSpecError as exc:
        raise ValueError(f"invalid conda match spec {text!r}: {str(exc).splitlines()[0]}") from exc


def normalize_pip_line(text: str) -> tuple[bool, str]:
    """Normalize one line of a `pip:` list: (is_option, text); ValueError when invalid.

    Requirements follow PEP 508; URL references without a name (`git+https://…`, a wheel URL)
    are kept as written, since pip reads them that way. Lines that name local files (`-r`, `-c`,
    `-e`, a path) are refused: the key cannot see inside those files, so two different images
    would share it.
    """
    line = text.strip()
    if not line:
        raise ValueError("empty pip requirement")
    if line.startswith("-"):
        match = _PIP_OPTION.match(line)
        if match is None:
            raise ValueError(f"invalid pip option {line!r}")
        flag, value = match.group("flag"), match.group("value")
        if flag in _FILE_OPTIONS:
            raise ValueError(
                f"{flag} names a file whose content envctl cannot key: list the requirements "
                "themselves in the pip: list"
            )
        return True, _pip_option(flag, value)
    if line.startswith((".", "/", "~", "file:")):
        raise ValueError(
            f"{line!r} is a local path whose content envctl cannot key: publish it as a wheel "
            "on an index or a --find-links location and name it here"
        )
    if "://" in line:
        try:
            Requirement(line)
        except InvalidRequirement:
            return False, line
    return False, _fast_requirement(line) or _requirement(line)


def _pip_option(flag: str, value: str | None) -> str:
    """One allowlisted pip option in its written-long form; ValueError for any other."""
    if flag == "--no-binary":
        raise ValueError(
            "--no-binary: envctl installs wheels only (building sdists would run "
            "their code on the builder host)"
        )
    if flag in _PIP_SHORT:
        if value is None:
            raise ValueError(f"pip option {flag} needs a value")
        # kept as written so that keys computed before the allowlist do not move
        return f"{flag} {value.strip()}"
    allowed = PIP_SOURCE_OPTIONS | PIP_RESOLVER_OPTIONS | _PIP_IMPLIED_OPTIONS
    if flag not in allowed:
        raise ValueError(
            f"pip option {flag} is not allowed in a spec: pip runs on the builder host, so a spec "
            f"may carry only {', '.join(sorted(allowed))}"
        )
    if (value is None) == (flag in _PIP_VALUED):
        wrong = "needs a value" if value is None else "takes no value"
        raise ValueError(f"pip option {flag} {wrong}")
    return flag if value is None else f"{flag}={value.strip()}"


def pip_option_flag(option: str) -> str:
    """The long flag of a normalized pip option (`-i URL` is `--index-url`)."""
    flag = option.split("=", 1)[0].split(" ", 1)[0]
    return _PIP_SHORT.get(flag, flag)


def _fast_requirement(line: str) -> str | None:
    """`name[extras] op version, …`, the common form, at a third of packaging's cost.

    Each clause is still checked by packaging's `Specifier`, so this accepts nothing that
    packaging rejects; anything unusual (markers, URLs, parentheses) returns None.
    """
    match = _SIMPLE_REQUIREMENT.match(line)
    if match is None:
        return None
    out: str = canonicalize_name(match.group("name"))
    if match.group("extras") is not None:
        extras = [e.strip() for e in match.group("extras").split(",")]
        if not all(_NAME.match(e) for e in extras):
            return None
        out += "[" + ",".join(sorted({canonicalize_name(e) for e in extras})) + "]"
    if match.group("spec"):
        try:
            clauses = [str(Specifier(c)) for c in match.group("spec").split(",")]
        except InvalidSpecifier:
            return None  # let packaging phrase the error
        out += ",".join(sorted(set(clauses)))
    return out


def _requirement(line: str) -> str:
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"invalid pip requirement {line!r}: {reason}") from exc
    out: str = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted({canonicalize_name(e) for e in req.extras})) + "]"
    if req.url:
        out += f" @ {req.url}"
    else:
        out += ",".join(sorted({str(s) for s in req.specifier}))
    if req.marker is not None:
        out += f" ; {req.marker}"
    return out


class CondaFile(BaseModel):
    """The shape of a conda `environment.yml` (match specs are checked after, one by one)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = None
    prefix: str | None = None
    channels: list[str] = Field(default_factory=list)
    dependencies: list[Any] = Field(default_factory=list)
    variables: dict[VariableName, VariableValue] = Field(default_factory=dict)


def parse_conda(doc: YamlDocument, at: Path = ()) -> tuple[CondaEnvironment, dict[str, str]]:
    """Read the conda environment mapping found at `at` in `doc`.

    Returns the environment and its `variables:` (conda sets them on activation; envctl sets them
    in the image).
    """
    model = validate(doc, CondaFile, at)
    channels: list[str] = []
    for i, channel in enumerate(model.channels):
        if not channel.strip() or any(c.isspace() for c in channel.strip()):
            raise doc.error((*at, "channels", i), f"invalid channel {channel!r}")
        channels.append(channel.strip().rstrip("/"))
    deps: set[str] = set()
    pip: set[str] = set()
    pip_options: list[str] = []
    urls: list[tuple[str, str, int | None, str]] = []
    for i, dep in enumerate(model.dependencies):
        here = (*at, "dependencies", i)
        if isinstance(dep, str):
            try:
                deps.add(normalize_match_spec(dep))
            except ValueError as exc:
                raise doc.error(here, str(exc)) from None
        elif isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            _pip_list(doc, (*here, "pip"), dep["pip"], pip, pip_options, urls)
        else:
            raise doc.error(here, "a dependency is a conda match spec or a `pip:` list")
    env = CondaEnvironment(
        # a repeated channel cannot change priority: the first occurrence wins
        channels=tuple(dict.fromkeys(channels)),
        dependencies=tuple(sorted(deps)),
        pip=tuple(sorted(pip)),
        pip_options=tuple(dict.fromkeys(pip_options)),
        pip_urls=tuple(urls),
    )
    return env, dict(model.variables)


def _pip_list(
    doc: YamlDocument,
    at: Path,
    raw: list[Any],
    pip: set[str],
    options: list[str],
    urls: list[tuple[str, str, int | None, str]],
) -> None:
    for j, line in enumerate(raw):
        if not isinstance(line, str):
            raise doc.error((*at, j), f"a pip requirement is a string, not {line!r}")
        try:
            is_option, text = normalize_pip_line(line)
        except ValueError as exc:
            raise doc.error((*at, j), str(exc)) from None
        (options.append if is_option else pip.add)(text)
        if not is_option and "://" in text:
            urls.append((text, doc.source, doc.line_of((*at, j)), format_path((*at, j))))
