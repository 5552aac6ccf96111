"""Generated envctl specs: small models, their YAML text, and hypothesis strategies that draw them.

Specs are small models (`Spec`, `Env`, `Step`, `Dep`, `PipReq`) written out as envctl YAML by a
tiny emitter whose cosmetics (quoting, flow style, comments, blank lines, trailing spaces) a
`Style` draws from a `Random`; with every cosmetic off (`canonical_yaml`) the text is fixed. The
strategies draw models, their parts (deps, steps, variables, base images, platforms) and build
context files. Nothing here computes a key; `test_properties` does, and states the rules.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from random import Random
from typing import Any

import yaml
from hypothesis import strategies as st

# ---------------------------------------------------------------- models and their canonical text


@dataclass(frozen=True)
class Dep:
    """A conda match spec: `name`, or `name<op><version>`."""

    name: str
    op: str = ""
    version: str = ""

    def text(self, before: str = "", after: str = "") -> str:
        return self.name if not self.op else f"{self.name}{before}{self.op}{after}{self.version}"


@dataclass(frozen=True)
class PipReq:
    """A pip requirement; `parts` are the lowercase words of its PEP 503 name."""

    parts: tuple[str, ...]
    specifier: str = ""

    def text(self) -> str:
        return "-".join(self.parts) + self.specifier


@dataclass(frozen=True)
class Env:
    """A conda environment file's content."""

    channels: tuple[str, ...] = ()
    deps: tuple[Dep, ...] = ()
    pip: tuple[PipReq, ...] = ()
    name: str | None = None
    prefix: str | None = None
    variables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Step:
    """A Docker instruction: keyword, optional sub-keyword (ONBUILD's), argument text."""

    keyword: str
    body: str
    sub: str | None = None

    def text(self, case: Callable[[str], str] = str, gap: str = " ") -> str:
        words = [case(self.keyword), *([case(self.sub)] if self.sub else []), self.body]
        return gap.join(words)


@dataclass(frozen=True)
class Spec:
    """An envctl spec; `env` is its inline conda environment."""

    base: str
    platform: str | None = None
    variables: tuple[tuple[str, str], ...] = ()
    steps: tuple[Step, ...] = ()
    env: Env | None = None


def conda_tree(
    env: Env, dep: Callable[[Dep], str] = Dep.text, pip: Callable[[PipReq], str] = PipReq.text
) -> dict[str, Any]:
    """An environment as the mapping a conda file holds."""
    tree: dict[str, Any] = {}
    if env.name is not None:
        tree["name"] = env.name
    if env.prefix is not None:
        tree["prefix"] = env.prefix
    tree["channels"] = list(env.channels)
    deps: list[Any] = [dep(d) for d in env.deps]
    if env.pip:
        deps.append({"pip": [pip(p) for p in env.pip]})
    tree["dependencies"] = deps
    if env.variables:
        tree["variables"] = dict(env.variables)
    return tree


def steps_text(steps: tuple[Step, ...], step: Callable[[Step], str] = Step.text) -> str:
    """Steps as `docker_steps` text, one line each as `step` writes it."""
    return "".join(step(s) + "\n" for s in steps)


def envctl_tree(spec: Spec, conda: Any = None) -> dict[str, Any]:
    """A spec as the mapping an envctl YAML file holds; `conda` overrides the inline env."""
    tree: dict[str, Any] = {"base_image": spec.base}
    if spec.platform is not None:
        tree["platform"] = spec.platform
    if spec.variables:
        tree["variables"] = dict(spec.variables)
    if spec.steps:
        tree["docker_steps"] = steps_text(spec.steps)
    if conda is not None:
        tree["conda"] = conda
    elif spec.env is not None:
        tree["conda"] = conda_tree(spec.env)
    return tree


# ---------------------------------------------------------------- a YAML emitter with cosmetics


@dataclass
class Style:
    """Which cosmetics to draw when writing YAML (all off: block style, plain where safe)."""

    rnd: Random
    quoting: bool = False
    flow: bool = False
    comments: bool = False
    blanks: bool = False  # blank lines and trailing spaces

    def maybe(self, enabled: bool) -> bool:
        return enabled and self.rnd.random() < 0.35

    def scalar(self, s: str) -> str:
        double = json.dumps(s)
        if not self.quoting:
            return s if _plain_ok(s) else double
        options = [double] + (["'" + s.replace("'", "''") + "'"] if "\n" not in s else [])
        return self.rnd.choice(options + ([s] if _plain_ok(s) else []))

    def end(self) -> str:
        """What may follow a value on its line: a comment and/or trailing spaces."""
        out = "  # note: ignored" if self.maybe(self.comments) else ""
        return out + (self.rnd.choice([" ", "   ", "\t"]) if self.maybe(self.blanks) else "")

    def before(self, indent: int, out: list[str]) -> None:
        if self.maybe(self.blanks):
            out.append(self.rnd.choice(["", "  "]))
        if self.maybe(self.comments):
            out.append(" " * indent + "# a comment: - not [yaml] {content}")


@functools.cache
def _plain_ok(s: str) -> bool:
    """True when `s` written plain reads back as the same string as a key, value or item."""
    if not s or s != s.strip() or "\n" in s:
        return False
    probes: list[tuple[str, Any]] = [
        (f"k: {s}", {"k": s}),
        (f"- {s}", [s]),
        (f"[{s}]", [s]),
        (f"{{k: {s}}}", {"k": s}),
        (f"{s}: v", {s: "v"}),
        (f"{{{s}: v}}", {s: "v"}),
    ]
    try:
        return all(yaml.safe_load(text) == want for text, want in probes)
    except yaml.YAMLError:
        return False


def to_yaml(tree: dict[str, Any], style: Style) -> str:
    """Write `tree` (str, list, dict) as YAML text with `style`'s cosmetics."""
    if style.maybe(style.flow):
        return _flow(tree, style) + style.end() + "\n"
    out: list[str] = []
    _mapping(tree, 0, style, out)
    style.before(0, out)
    return "\n".join(out) + "\n"


def _flow(value: Any, style: Style) -> str:
    if isinstance(value, str):
        return style.scalar(value)
    if isinstance(value, dict):
        items = (f"{style.scalar(k)}: {_flow(v, style)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return "[" + ", ".join(_flow(v, style) for v in value) + "]"


def _mapping(tree: dict[str, Any], indent: int, style: Style, out: list[str]) -> None:
    for i, (key, value) in enumerate(tree.items()):
        if i or indent == 0:  # a sequence item's first key shares the `- ` line
            style.before(indent, out)
        _value(" " * indent + style.scalar(key) + ":", value, indent, style, out)


def _value(head: str, value: Any, indent: int, style: Style, out: list[str]) -> None:
    if isinstance(value, str) and "\n" in value and not style.maybe(style.flow):
        chomp = "-" if not value.endswith("\n") else "+" if value.endswith("\n\n") else ""
        out.append(f"{head} |2{chomp}{style.end()}")
        for line in value.removesuffix("\n").split("\n"):
            out.append(" " * (indent + 2) + line if line else "")
    elif isinstance(value, str) or not value or style.maybe(style.flow):
        out.append(f"{head} {_flow(value, style)}{style.end()}")
    elif isinstance(value, dict):
        out.append(head + style.end())
        _mapping(value, indent + 2, style, out)
    else:
        out.append(head + style.end())
        for item in value:
            style.before(indent + 2, out)
            if isinstance(item, dict) and item and not style.maybe(style.flow):
                nested: list[str] = []
                _mapping(item, indent + 4, style, nested)
                out.append(" " * (indent + 2) + "- " + nested[0].lstrip(" "))
                out.extend(nested[1:])
            else:
                out.append(" " * (indent + 2) + f"- {_flow(item, style)}{style.end()}")


def canonical_yaml(tree: dict[str, Any]) -> str:
    """`tree` as YAML with every cosmetic off: the one fixed text for it."""
    return to_yaml(tree, Style(Random(0)))  # noqa: S311 - cosmetics off: never drawn from


# ---------------------------------------------------------------- strategies

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
LETTERS = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
word = st.builds(str.__add__, LETTERS, st.text(_ALNUM, max_size=4))
version = st.lists(st.integers(0, 20).map(str), min_size=1, max_size=3).map(".".join)
dep = st.builds(
    Dep, word, st.sampled_from(["", ">=", "<=", ">", "<", "==", "!=", "=", "~="]), version
)
deps = st.lists(dep, max_size=4, unique_by=lambda d: d.name)
pinned_dep = st.builds(Dep, word, st.just("="), version)
pip_req = st.builds(
    PipReq,
    st.lists(word, min_size=1, max_size=3).map(tuple),
    st.sampled_from(["", ">=1.2", "==2.0", "<3", ">=1.0,<2", "[extra]>=1"]),
)
pips = st.lists(pip_req, max_size=3, unique_by=lambda p: p.parts)
CHANNELS = ["conda-forge", "defaults", "bioconda", "pytorch", "nvidia", "https://repo.example/ch"]
var_name = st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True)
var_value = st.text("ab1 :#-'\"/=.,[{*&!", max_size=8)
variables = st.dictionaries(var_name, var_value, max_size=3).map(lambda d: tuple(d.items()))
PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/386"]
PLATFORMS += ["linux/ppc64le", "linux/s390x", "linux/x86_64", "linux/aarch64"]
sha = st.text("0123456789abcdef", min_size=64, max_size=64)
bases = st.sampled_from(
    [
        "ubuntu",
        "ubuntu:22.04",
        "127.0.0.1:5001/base/debian:bookworm",
        "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest",
        "python@sha256:" + "ab" * 32,
    ]
)
OFFICIAL = st.sampled_from(["ubuntu", "debian", "python", "alpine", "busybox"]) | word


@st.composite
def envs(draw: st.DrawFn, *, min_channels: int = 0) -> Env:
    """A conda environment with at least `min_channels` channels."""
    channels = st.lists(st.sampled_from(CHANNELS), min_size=min_channels, max_size=3, unique=True)
    return Env(
        channels=tuple(draw(channels)),
        deps=tuple(draw(deps)),
        pip=tuple(draw(pips)),
        name=draw(st.none() | word),
        prefix=draw(st.none() | word.map(lambda w: f"/opt/conda/envs/{w}")),
        variables=draw(variables),
    )


shell_word = st.text("abxyz019$=./-_\"'", min_size=1, max_size=5)
shell_gap = st.sampled_from([" ", "  ", "\t", " \t "])


@st.composite
def shell_body(draw: st.DrawFn) -> str:
    """The argument of a shell-form step: words with runs of spaces and tabs between them."""
    words = [draw(word), *draw(st.lists(shell_word, max_size=3))]  # `RUN --x` would be a flag
    return "".join(w + draw(shell_gap) for w in words[:-1]) + words[-1]


json_body = st.lists(st.text("abc/-.", min_size=1, max_size=4), min_size=1, max_size=3).map(
    lambda ws: "[" + ", ".join(f'"{w}"' for w in ws) + "]"
)
path_word = st.text("abc./_-", min_size=1, max_size=5).filter(
    lambda w: w.strip(".") and not w.startswith("-")
)
shell_step = st.builds(lambda b: Step("RUN", b), shell_body())
steps_one = st.one_of(
    shell_step,
    st.builds(lambda b: Step("CMD", b), shell_body()),
    st.builds(lambda b: Step("ONBUILD", b, sub="RUN"), shell_body()),
    st.builds(Step, st.sampled_from(["RUN", "CMD", "ENTRYPOINT"]), json_body),
    st.builds(lambda k, v: Step("ENV", f"{k}={v}"), var_name, word),
    st.builds(lambda k, v: Step("LABEL", f"{k}={v}"), word, word),
    st.builds(lambda p: Step("WORKDIR", "/" + p), path_word),
    st.builds(lambda a, b: Step("COPY", f"{a} /{b}"), path_word, path_word),
    st.builds(lambda u: Step("USER", u), word),
    st.builds(lambda p: Step("EXPOSE", str(p)), st.integers(1, 65535)),
    st.builds(lambda n: Step("ARG", n), var_name),
)
some_steps = st.lists(steps_one, min_size=1, max_size=4).map(tuple)


@st.composite
def specs(
    draw: st.DrawFn, *, with_env: bool = False, min_variables: int = 0, min_steps: int = 0
) -> Spec:
    """An envctl spec; its inline env (always there `with_env`) agrees with its own variables."""
    own = draw(st.dictionaries(var_name, var_value, min_size=min_variables, max_size=3))
    env = draw(envs() if with_env else st.none() | envs())
    if env is not None:  # a variable set in both places must agree (else it is an error)
        env = replace(env, variables=tuple((k, own.get(k, v)) for k, v in env.variables))
    return Spec(
        base=draw(bases),
        platform=draw(st.none() | st.sampled_from(PLATFORMS)),
        variables=tuple(own.items()),
        steps=tuple(draw(st.lists(steps_one, min_size=min_steps, max_size=4))),
        env=env,
    )


def pairs(n: int) -> st.SearchStrategy[tuple[int, int]]:
    """Two different positions in a sequence of length `n` (n >= 2)."""
    return st.sampled_from([(i, j) for i in range(n) for j in range(i + 1, n)])


def context_files(min_bytes: int = 0) -> st.SearchStrategy[dict[str, bytes]]:
    """A few small files, or one just past hash_file's 1 MiB chunk."""
    return st.dictionaries(
        st.sampled_from(["a.txt", "b.bin", "sub/c.txt", "sub/deeper/d", "e"]),
        st.binary(min_size=min_bytes, max_size=64)
        | st.sampled_from([1 << 20, (1 << 20) + 1]).map(lambda n: b"x" * n),
        min_size=1,
        max_size=3,
    )
