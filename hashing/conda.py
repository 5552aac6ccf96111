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

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field

from hashing.validate import VariableName, VariableValue, validate
from hashing.yamldoc import Path, YamlDocument, format_path

_NAME_TEXT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_NAME = re.compile(rf"^{_NAME_TEXT}$")
_SIMPLE_REQUIREMENT = re.compile(
    rf"^(?P<name>{_NAME_TEXT})\s*(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[<>=!~][^;@()]*)?$"
)
_FILE_OPTIONS = frozenset({"-r", "--requirement", "-c", "--constraint", "-e", "--editable"})
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a pip line; a tab is whitespace
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


_HASH = re.compile(r"^--hash[=\s]\s*(?P<alg>sha256|sha384|sha512):(?P<hex>[0-9a-fA-F]+)$")
_PER_REQUIREMENT = re.compile(r"\s--?[A-Za-z]")


def pip_hashes(requirement: str) -> tuple[str, tuple[str, ...]]:
    """A normalized requirement's text without its `--hash` options, and their values
    (`sha256:…`): what the pinned wheel must be one of."""
    name, *options = requirement.split(" --hash=")
    return name, tuple(options)


def split_pip_options(line: str) -> list[str]:
    """The options of one `pip:` line that starts with `-`, each with its value: pip reads
    `--pre --index-url URL` in a requirements file as two options."""
    words = line.split()
    out: list[str] = []
    for word in words:
        if word.startswith("-") or not out:
            out.append(word)
        else:
            out[-1] += f" {word}"
    return out


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
    if CONTROL.search(line):
        # a line break would make a second line of the requirements the resolver reads
        raise ValueError(f"a pip requirement is one line without control characters: {line!r}")
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
    hashes: list[str] = []
    cut = _PER_REQUIREMENT.search(line)
    if cut is not None and "://" not in line[: cut.start()]:
        # per-requirement options, as pip reads them in a requirements file: `--hash` only
        line, options = line[: cut.start()].strip(), split_pip_options(line[cut.start() :])
        for option in options:
            match = _HASH.match(option)
            if match is None:
                raise ValueError(
                    f"{option}: the only option a pip requirement may carry is --hash=ALG:HEX"
                )
            hashes.append(f"{match.group('alg')}:{match.group('hex').lower()}")
    suffix = "".join(f" --hash={h}" for h in sorted(set(hashes)))
    if "://" in line:
        try:
            Requirement(line)
        except InvalidRequirement:
            return False, line + suffix
    return False, (_fast_requirement(line) or _requirement(line)) + suffix


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
