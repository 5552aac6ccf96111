"""pip requirement lines as a conda file carries them: each requirement re-written by `packaging`
(PEP 503 names, sorted extras, specifiers in their normal form), options read against an
allowlist (pip runs on the builder host), `--hash` values kept beside their requirement.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier
from packaging.utils import canonicalize_name

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
