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

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hashing.pip import (
    PIP_RESOLVER_OPTIONS,
    normalize_pip_line,
    pip_option_flag,
    split_pip_options,
)
from hashing.validate import VariableName, VariableValue, validate
from hashing.yamldoc import Path, YamlDocument, format_path


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


@functools.cache
def _rattler() -> tuple[Any, type[Exception]]:
    """rattler's match-spec parser, loaded on first use: a client that only reads a spec to
    send it (`specio.request`, gathering) never normalizes one, and installs no rattler."""
    from rattler import MatchSpec
    from rattler.exceptions import InvalidMatchSpecError

    return MatchSpec, InvalidMatchSpecError


def normalize_match_spec(text: str) -> str:
    """Re-write one conda match spec in rattler's canonical form; ValueError when invalid."""
    if not text.strip():
        raise ValueError("empty match spec")
    match_spec, invalid = _rattler()
    try:
        return str(match_spec(text.strip()))
    except invalid as exc:
        raise ValueError(f"invalid conda match spec {text!r}: {str(exc).splitlines()[0]}") from exc


class CondaFile(BaseModel):
    """The shape of a conda `environment.yml` (match specs are checked after, one by one), with
    the keys conda-lock reads in the same file."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str | None = None
    prefix: str | None = None
    channels: list[str] = Field(default_factory=list)
    dependencies: list[Any] | None = Field(default_factory=list)  # conda takes `dependencies:`
    variables: dict[VariableName, VariableValue] = Field(default_factory=dict)
    # conda-lock: the platforms the file is for (`platform`, as some of its own tests write it)
    platforms: list[str] | None = None
    platform: list[str] | None = None
    # conda-lock: the category of every dependency here; all categories are installed
    category: str | None = None
    # conda-lock: whether pip requirements may be resolved from an index, and which indexes;
    # envctl resolves them from the operator's index alone (the spec's sources are dropped)
    allow_pypi_requests: bool | None = Field(default=None, alias="allow-pypi-requests")
    pip_repositories: list[str] | None = Field(default=None, alias="pip-repositories")


# conda's subdir of each image platform envctl builds (Linux only: images run Linux)
SUBDIRS = {
    "linux/amd64": "linux-64",
    "linux/arm64": "linux-aarch64",
    "linux/ppc64le": "linux-ppc64le",
    "linux/s390x": "linux-s390x",
    "linux/386": "linux-32",
    "linux/arm/v7": "linux-armv7l",
    "linux/arm/v6": "linux-armv6l",
    "linux/riscv64": "linux-riscv64",
}
# The platform selectors conda-build, conda-lock and micromamba read (`# [linux64]`,
# `sel(unix)`), and those that hold on each subdir. Any other word makes a comment a comment.
_ARCH_WORDS = frozenset({"x86", "x86_64", "aarch64", "arm64", "ppc64le", "s390x", "armv6l",
                         "armv7l", "riscv64", "linux32", "linux64", "linux-64", "osx64", "win32",
                         "win64"})  # fmt: skip
SELECTOR_WORDS = frozenset({"linux", "osx", "win", "unix", "emscripten", "wasi"}) | _ARCH_WORDS
_TRUE = {
    "linux-64": {"linux", "linux64", "unix", "x86", "x86_64", "linux-64"},
    "linux-aarch64": {"linux", "unix", "aarch64"},
    "linux-ppc64le": {"linux", "unix", "ppc64le"},
    "linux-s390x": {"linux", "unix", "s390x"},
    "linux-32": {"linux", "linux32", "unix", "x86"},
    "linux-armv7l": {"linux", "unix", "armv7l"},
    "linux-armv6l": {"linux", "unix", "armv6l"},
    "linux-riscv64": {"linux", "unix", "riscv64"},
}
_COMMENT_SELECTOR = re.compile(r"\[([^\[\]]+)\]\s*$")
_SEL_KEY = re.compile(r"^sel\((?P<expr>[^()]*)\)$")
_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z_][A-Za-z0-9_-]*|\S+)")


def selector_holds(expression: str, subdir: str) -> bool | None:
    """Whether a platform selector (`linux64`, `unix and not aarch64`, …) holds on `subdir`;
    None when `expression` is not made of platform words alone (a comment like
    `[document_parsing]`, or a python version test envctl cannot know before the solve).
    ValueError for platform words that do not make an expression."""
    items = _TOKEN.findall(expression)
    words = [t for t in items if t not in ("(", ")", "and", "or", "not")]
    if not words or any(w not in SELECTOR_WORDS for w in words):
        return None
    true = _TRUE.get(subdir, set())
    position = 0

    def peek() -> str | None:
        return items[position] if position < len(items) else None

    def take() -> str:
        nonlocal position
        item = peek()
        if item is None:
            raise ValueError(f"selector [{expression}] ends too soon")
        position += 1
        return item

    def either() -> bool:
        value = both()
        while peek() == "or":
            take()
            value = both() or value
        return value

    def both() -> bool:
        value = negated()
        while peek() == "and":
            take()
            value = negated() and value
        return value

    def negated() -> bool:
        if peek() == "not":
            take()
            return not negated()
        item = take()
        if item == "(":
            value = either()
            if take() != ")":
                raise ValueError(f"selector [{expression}] has an unclosed parenthesis")
            return value
        if item in (")", "and", "or"):
            raise ValueError(f"selector [{expression}]: {item!r} where a platform belongs")
        return item in true

    value = either()
    if peek() is not None:
        raise ValueError(f"selector [{expression}]: unexpected {peek()!r}")
    return value


def parse_conda(
    doc: YamlDocument, at: Path = (), *, platform: str = "linux/amd64"
) -> tuple[CondaEnvironment, dict[str, str]]:
    """Read the conda environment mapping found at `at` in `doc`, for an image `platform`.

    Selectors (conda-lock's `- pkg  # [linux64]`, micromamba's `- sel(linux): pkg`) are
    evaluated for the platform: a line whose selector does not hold is as if absent. Returns
    the environment and its `variables:` (conda sets them on activation; envctl sets them in
    the image).
    """
    model = validate(doc, CondaFile, at)
    subdir = SUBDIRS.get(platform, "")
    for key in ("platforms", "platform"):
        listed = getattr(model, key)
        if listed is not None and subdir not in listed:
            raise doc.error(
                (*at, key),
                f"the file is for platforms {', '.join(listed) or 'none'}; this image is "
                f"{platform} ({subdir or 'no conda subdir'})",
            )
    if model.allow_pypi_requests is False and _has_pip(model.dependencies or []):
        raise doc.error(
            (*at, "allow-pypi-requests"),
            "allow-pypi-requests: false forbids resolving the pip requirements from an index, "
            "and envctl resolves them from the operator's index only",
        )
    for j, url in enumerate(model.pip_repositories or []):
        if not isinstance(url, str) or not url.strip():
            raise doc.error((*at, "pip-repositories", j), "a pip repository is a URL")
    channels: list[str] = []
    for i, channel in enumerate(model.channels):
        if not channel.strip() or any(c.isspace() for c in channel.strip()):
            raise doc.error((*at, "channels", i), f"invalid channel {channel!r}")
        channels.append(channel.strip().rstrip("/"))
    deps: set[str] = set()
    pip: set[str] = set()
    pip_options: list[str] = []
    urls: list[tuple[str, str, int | None, str]] = []
    for i, dep in enumerate(model.dependencies or []):
        here = (*at, "dependencies", i)
        if isinstance(dep, dict) and len(dep) == 1:
            ((key, value),) = dep.items()
            match = _SEL_KEY.match(key)
            if match is not None:  # micromamba: `- sel(linux): pkg`
                if not _selected(doc, here, match.group("expr"), subdir, strict=True):
                    continue
                if not isinstance(value, str):
                    raise doc.error((*here, key), "a sel() dependency is one conda match spec")
                dep, here = value, (*here, key)
        if isinstance(dep, str):
            if not _selected(doc, here, _selector_of(doc, here), subdir):
                continue
            try:
                deps.add(normalize_match_spec(dep))
            except ValueError as exc:
                raise doc.error(here, str(exc)) from None
        elif isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            _pip_list(doc, (*here, "pip"), dep["pip"], pip, pip_options, urls, subdir)
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


def _has_pip(dependencies: list[Any]) -> bool:
    return any(isinstance(d, dict) and set(d) == {"pip"} and d["pip"] for d in dependencies)


def _selector_of(doc: YamlDocument, at: Path) -> str | None:
    """The `[…]` at the end of the comment after the item at `at`, if any."""
    comment = doc.comments.get(at)
    if comment is None:
        return None
    match = _COMMENT_SELECTOR.search(comment)
    return None if match is None else match.group(1)


def _selected(
    doc: YamlDocument, at: Path, expression: str | None, subdir: str, *, strict: bool = False
) -> bool:
    """Whether the item at `at` is in the environment on `subdir`: true without a selector
    or with one that is not about platforms (unless `strict`, as in `sel()`), else the
    selector's value."""
    if expression is None:
        return True
    try:
        holds = selector_holds(expression, subdir)
    except ValueError as exc:
        raise doc.error(at, str(exc)) from None
    if holds is None:
        if strict:
            raise doc.error(
                at, f"sel({expression}): not a platform selector (known: "
                f"{', '.join(sorted(SELECTOR_WORDS))}, with and, or, not)",
            )  # fmt: skip
        return True
    return holds


def _pip_list(
    doc: YamlDocument,
    at: Path,
    raw: list[Any],
    pip: set[str],
    options: list[str],
    urls: list[tuple[str, str, int | None, str]],
    subdir: str,
) -> None:
    for j, line in enumerate(raw):
        if not isinstance(line, str):
            raise doc.error((*at, j), f"a pip requirement is a string, not {line!r}")
        if not _selected(doc, (*at, j), _selector_of(doc, (*at, j)), subdir):
            continue
        parts = split_pip_options(line) if line.strip().startswith("-") else [line]
        for part in parts:
            try:
                is_option, text = normalize_pip_line(part)
            except ValueError as exc:
                raise doc.error((*at, j), str(exc)) from None
            (options.append if is_option else pip.add)(text)
        if not is_option and "://" in text:
            urls.append((text, doc.source, doc.line_of((*at, j)), format_path((*at, j))))
