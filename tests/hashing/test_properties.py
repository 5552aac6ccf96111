"""Property tests of the key rule: two specs get the same key exactly when they build one image.

Specs are drawn as models and written as envctl YAML by `tests.hashing.specgen`. Each "same key"
test writes one model two ways; each "different key" test makes one change that Docker or conda
would see.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from random import Random
from typing import Any

from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from hashing import (
    EnvKey,
    canonical_json,
    complete_spec,
    compute_key,
    is_key,
    normalize_platform,
    parse_image,
    parse_spec_text,
    parse_steps,
)
from specio.files import load_spec
from tests.hashing.specgen import (
    OFFICIAL,
    PLATFORMS,
    Dep,
    Env,
    PipReq,
    Spec,
    Step,
    Style,
    bases,
    canonical_yaml,
    conda_tree,
    context_files,
    dep,
    envctl_tree,
    envs,
    pairs,
    pinned_dep,
    pip_req,
    sha,
    shell_body,
    some_steps,
    specs,
    steps_text,
    to_yaml,
    var_name,
    var_value,
    word,
)

PROPERTY = settings(max_examples=60, deadline=None)

# ---------------------------------------------------------------- keys


def key_of(text: str, **complete: Any) -> EnvKey:
    """Parse one envctl/conda/Azure ML text and key it (conda files passed via `complete`)."""
    note(text)
    return compute_key(complete_spec(parse_spec_text(text, "spec.yml"), **complete))


def key_of_files(files: Mapping[str, str | bytes], spec: str = "spec.yml", **load: Any) -> EnvKey:
    """Write `files` into a fresh folder and key `spec` through load_spec."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            path.write_bytes(data)
            note(f"{name}: {data!r}")
        return compute_key(load_spec(Path(tmp, spec), **load))


# ---------------------------------------------------------------- same key: YAML, conda, pip


def random_case(rnd: Random) -> Callable[[str], str]:
    """A rewrite that puts each letter of a word in upper or lower case, drawn from `rnd`."""
    return lambda w: "".join(rnd.choice([c.lower(), c.upper()]) for c in w)


@PROPERTY
@given(specs(), st.randoms(use_true_random=False))
def test_yaml_quoting_and_flow_style_keep_key(spec: Spec, rnd: Random) -> None:
    tree = envctl_tree(spec)
    styled = to_yaml(tree, Style(rnd, quoting=True, flow=True))
    assert key_of(styled) == key_of(canonical_yaml(tree))


@PROPERTY
@given(specs(), st.randoms(use_true_random=False))
def test_yaml_comments_blank_lines_and_trailing_spaces_keep_key(spec: Spec, rnd: Random) -> None:
    tree = envctl_tree(spec)
    styled = to_yaml(tree, Style(rnd, comments=True, blanks=True))
    assert key_of(styled) == key_of(canonical_yaml(tree))


@PROPERTY
@given(specs(with_env=True), st.randoms(use_true_random=False))
def test_dependency_order_duplicates_and_env_name_keep_key(spec: Spec, rnd: Random) -> None:
    assert spec.env is not None
    tree = envctl_tree(spec)
    conda = conda_tree(spec.env)
    listed = conda["dependencies"]
    listed += [rnd.choice(listed) for _ in range(rnd.randint(0, 3)) if listed]
    rnd.shuffle(listed)
    for field in ("name", "prefix"):
        conda.pop(field, None)
        if rnd.random() < 0.5:
            conda[field] = rnd.choice(["other", "/opt/conda/envs/other", "x y"])
    assert key_of(canonical_yaml(envctl_tree(spec, conda))) == key_of(canonical_yaml(tree))


@PROPERTY
@given(envs(), st.randoms(use_true_random=False))
def test_match_spec_whitespace_keeps_key(env: Env, rnd: Random) -> None:
    def spaced(d: Dep) -> str:
        return d.text(rnd.choice(["", " ", "  "]), rnd.choice(["", " "]))

    spec = Spec("ubuntu", env=env)
    spaced_env = conda_tree(env, dep=spaced)
    assert key_of(canonical_yaml(envctl_tree(spec, spaced_env))) == key_of(
        canonical_yaml(envctl_tree(spec))
    )


@PROPERTY
@given(envs(), st.randoms(use_true_random=False))
def test_pip_name_forms_order_and_spacing_keep_key(env: Env, rnd: Random) -> None:
    def space() -> str:
        return rnd.choice(["", " ", "  "])

    def pep503_form(p: PipReq) -> str:
        name = p.parts[0]
        for part in p.parts[1:]:
            name += rnd.choice(["-", "_", ".", "__", "-_."]) + part
        spec = re.sub(r"[,\[\]]|[<>=!~]+", lambda m: m.group() + space(), p.specifier)
        return random_case(rnd)(name) + space() + spec.replace(",", space() + ",")

    spec = Spec("ubuntu", env=env)
    conda = conda_tree(env, pip=pep503_form)
    for entry in conda["dependencies"]:
        if isinstance(entry, dict):
            rnd.shuffle(entry["pip"])
    assert key_of(canonical_yaml(envctl_tree(spec, conda))) == key_of(
        canonical_yaml(envctl_tree(spec))
    )


@PROPERTY
@given(envs(min_channels=1), st.randoms(use_true_random=False))
def test_repeated_channel_keeps_key(env: Env, rnd: Random) -> None:
    spec = Spec("ubuntu", env=env)
    conda = conda_tree(env)
    conda["channels"] += [rnd.choice(env.channels) for _ in range(rnd.randint(1, 3))]
    assert key_of(canonical_yaml(envctl_tree(spec, conda))) == key_of(
        canonical_yaml(envctl_tree(spec))
    )


@PROPERTY
@given(specs(), st.randoms(use_true_random=False))
def test_variable_order_keeps_key(spec: Spec, rnd: Random) -> None:
    shuffled = list(spec.variables)
    rnd.shuffle(shuffled)
    reordered = replace(spec, variables=tuple(shuffled))
    assert key_of(canonical_yaml(envctl_tree(reordered))) == key_of(
        canonical_yaml(envctl_tree(spec))
    )


# YAML 1.1 reads these plain words as booleans or null; a variable may still be named so.
YAML_WORDS = ["ON", "OFF", "YES", "NO", "TRUE", "FALSE", "NULL", "On", "No", "True", "Null"]


@PROPERTY
@given(st.sampled_from(YAML_WORDS) | var_name, word, st.sampled_from(['"{}"', "'{}'", "{}"]))
def test_variable_name_quoting_keeps_key(name: str, value: str, quote: str) -> None:
    quoted = f'base_image: ubuntu\nvariables:\n  "{name}": "{value}"\n'
    written = f'base_image: ubuntu\nvariables:\n  {quote.format(name)}: "{value}"\n'
    assert key_of(written) == key_of(quoted)


# ---------------------------------------------------------------- same key: images


@PROPERTY
@given(OFFICIAL, st.none() | word, st.data())
def test_docker_hub_name_forms_keep_key(name: str, tag: str | None, data: st.DataObject) -> None:
    def spelled(prefixes: list[str], repo: str) -> str:
        suffix = data.draw(st.sampled_from(["", ":latest"])) if tag is None else f":{tag}"
        return data.draw(st.sampled_from(prefixes)) + repo + suffix

    hub = ["", "docker.io/", "index.docker.io/"]
    official = [*hub, "library/", "docker.io/library/", "index.docker.io/library/"]
    for repo, prefixes in ((name, official), (f"u/{name}", hub)):
        a, b = spelled(prefixes, repo), spelled(prefixes, repo)
        # quoted: a name like `no` is a YAML 1.1 boolean when plain (that case is its own test)
        assert key_of(f"base_image: '{a}'\n") == key_of(f"base_image: '{b}'\n")


@PROPERTY
@given(st.sampled_from(["ubuntu", "u/x", "ghcr.io/o/x", "localhost:5000/x/y"]), word, sha)
def test_tag_beside_digest_keeps_key(name: str, tag: str, digest: str) -> None:
    pinned = f"base_image: {name}@sha256:{digest}\n"
    assert key_of(f"base_image: {name}:{tag}@sha256:{digest}\n") == key_of(pinned)


# ---------------------------------------------------------------- same key: files and formats


@PROPERTY
@given(specs(with_env=True), st.booleans(), st.booleans())
def test_inline_conda_equals_conda_file(spec: Spec, bom: bool, crlf: bool) -> None:
    assert spec.env is not None
    conda = canonical_yaml(conda_tree(spec.env))
    conda = ("\ufeff" if bom else "") + (conda.replace("\n", "\r\n") if crlf else conda)
    files: dict[str, str | bytes] = {"env.yml": conda}
    files["spec.yml"] = canonical_yaml(envctl_tree(spec, "env.yml"))
    inline = {"spec.yml": canonical_yaml(envctl_tree(spec))}
    assert key_of_files(files) == key_of_files(inline)


@PROPERTY
@given(envs(), bases, st.booleans())
def test_three_formats_same_key(env: Env, base: str, inline_azure: bool) -> None:
    """envctl YAML ≡ a plain conda file with default_base ≡ Azure ML image + conda_file."""
    conda = conda_tree(env)
    own = replace(env, variables=())
    envctl = envctl_tree(Spec(base, variables=env.variables, env=own))
    azure: dict[str, Any] = {"name": "env", "version": "3", "image": base}
    azure["conda_file"] = conda if inline_azure else "env.yml"
    files: dict[str, str | bytes] = {"env.yml": canonical_yaml(conda)}
    files["spec.yml"] = canonical_yaml(envctl)
    files["azure.yml"] = canonical_yaml(azure)
    keys = {
        key_of_files(files, "spec.yml"),
        key_of_files(files, "env.yml", default_base=parse_image(base)),
        key_of_files(files, "azure.yml"),
    }
    assert len(keys) == 1


# ---------------------------------------------------------------- same key: docker steps


@PROPERTY
@given(some_steps, st.randoms(use_true_random=False))
def test_instruction_keyword_case_and_spacing_keep_key(
    steps_: tuple[Step, ...], rnd: Random
) -> None:
    def restyled(s: Step) -> str:
        lead = rnd.choice(["", " ", "\t"])
        return lead + s.text(random_case(rnd), gap=rnd.choice([" ", "   ", "\t"]))

    spec = Spec("ubuntu", steps=steps_)
    tree = envctl_tree(spec) | {"docker_steps": steps_text(steps_, restyled)}
    assert key_of(canonical_yaml(tree)) == key_of(canonical_yaml(envctl_tree(spec)))


@PROPERTY
@given(shell_body(), st.sampled_from(["cmd", "Cmd", "cMD"]), st.sampled_from(["", "--retries=3 "]))
def test_healthcheck_cmd_case_keeps_key(body: str, cmd: str, flags: str) -> None:
    """Docker reads HEALTHCHECK's CMD in any case, as it reads instruction keywords."""

    def spec(word: str) -> str:
        return (
            f"base_image: ubuntu\ndocker_steps: {json.dumps(f'HEALTHCHECK {flags}{word} {body}')}\n"
        )

    assert key_of(spec(cmd)) == key_of(spec("CMD"))


NOISE = ["", "   ", "\t", "# a comment", "#", "  # indented comment", "# RUN echo not a step"]


@PROPERTY
@given(some_steps, st.randoms(use_true_random=False))
def test_docker_comments_and_blank_lines_keep_key(steps_: tuple[Step, ...], rnd: Random) -> None:
    lines: list[str] = []
    for s in steps_:
        lines += [rnd.choice(NOISE) for _ in range(rnd.randint(0, 2))] + [s.text()]
    lines += [rnd.choice(NOISE) for _ in range(rnd.randint(0, 2))]
    spec = Spec("ubuntu", steps=steps_)
    tree = envctl_tree(spec) | {"docker_steps": "\n".join(lines) + "\n"}
    assert key_of(canonical_yaml(tree)) == key_of(canonical_yaml(envctl_tree(spec)))


def continued(line: str, rnd: Random) -> str:
    """`line` cut with backslash-newline where Docker joins it back (never before a `#`)."""
    cuts = sorted(rnd.sample(range(1, len(line)), min(len(line) - 1, rnd.randint(0, 3))))
    pieces = [line[i:j] for i, j in zip([0, *cuts], [*cuts, len(line)], strict=True)]
    out = pieces[0]
    for piece in pieces[1:]:
        if not piece.strip() or piece.lstrip().startswith("#"):
            out += piece
            continue
        between = "".join(
            rnd.choice(["\n", "\n# comment", "\n   "]) for _ in range(rnd.randint(0, 1))
        )
        out += "\\" + rnd.choice(["", " ", "\t"]) + between + "\n" + piece
    return out


@PROPERTY
@given(some_steps, st.randoms(use_true_random=False))
def test_line_continuations_keep_key(steps_: tuple[Step, ...], rnd: Random) -> None:
    spec = Spec("ubuntu", steps=steps_)
    tree = envctl_tree(spec) | {
        "docker_steps": steps_text(steps_, lambda s: continued(s.text(), rnd))
    }
    assert key_of(canonical_yaml(tree)) == key_of(canonical_yaml(envctl_tree(spec)))


# ---------------------------------------------------------------- different key


def spec_key(spec: Spec) -> EnvKey:
    """The key of `spec` written as canonical YAML."""
    return key_of(canonical_yaml(envctl_tree(spec)))


def swapped(items: tuple[Any, ...], ij: tuple[int, int]) -> tuple[Any, ...]:
    """`items` with the two positions `ij` (drawn by `pairs`) exchanged."""
    out = list(items)
    out[ij[0]], out[ij[1]] = out[ij[1]], out[ij[0]]
    return tuple(out)


@PROPERTY
@given(specs(), envs(min_channels=2), st.data())
def test_channel_order_changes_key(spec: Spec, env: Env, data: st.DataObject) -> None:
    # the channels of nothing do not matter; the spec's own variables are the only ones
    env = replace(env, deps=(*env.deps, Dep("numpy")), variables=())
    ij = data.draw(pairs(len(env.channels)))
    moved = replace(env, channels=swapped(env.channels, ij))
    assert spec_key(replace(spec, env=moved)) != spec_key(replace(spec, env=env))


@PROPERTY
@given(specs(), pinned_dep)
def test_fuzzy_and_exact_pin_differ(spec: Spec, pin: Dep) -> None:
    env = spec.env or Env()
    env = replace(env, deps=tuple(d for d in env.deps if d.name != pin.name))
    fuzzy = replace(spec, env=replace(env, deps=(*env.deps, pin)))
    exact = replace(spec, env=replace(env, deps=(*env.deps, replace(pin, op="=="))))
    assert spec_key(fuzzy) != spec_key(exact)


@PROPERTY
@given(specs(), shell_body().filter(lambda b: len(b) >= 2), st.data())
def test_shell_argument_whitespace_changes_key(spec: Spec, body: str, data: st.DataObject) -> None:
    """Widen, narrow, retype, remove or insert the whitespace at one point inside `RUN <body>`."""
    at = data.draw(st.integers(1, len(body) - 1), label="at")
    gap_start = len(body[:at].rstrip(" \t"))
    gap_end = len(body) - len(body[at:].lstrip(" \t"))
    old_gap = body[gap_start:gap_end]
    new_gap = data.draw(
        st.sampled_from(["", " ", "  ", "\t", " \t"]).filter(lambda g: g != old_gap)
    )
    changed = body[:gap_start] + new_gap + body[gap_end:]
    i = data.draw(st.integers(0, len(spec.steps)), label="position")
    before = replace(spec, steps=(*spec.steps[:i], Step("RUN", body), *spec.steps[i:]))
    after = replace(spec, steps=(*spec.steps[:i], Step("RUN", changed), *spec.steps[i:]))
    assert spec_key(after) != spec_key(before)


@PROPERTY
@given(specs(min_steps=2), st.data())
def test_step_order_changes_key(spec: Spec, data: st.DataObject) -> None:
    ij = data.draw(pairs(len(spec.steps)))
    first, second = (parse_steps(spec.steps[k].text(), "x") for k in ij)
    assume(first != second)
    assert spec_key(replace(spec, steps=swapped(spec.steps, ij))) != spec_key(spec)


@PROPERTY
@given(specs(min_variables=1), st.data())
def test_variable_value_changes_key(spec: Spec, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(spec.variables) - 1))
    name, value = spec.variables[i]
    if spec.env is not None:  # keep the variable in one place, so it has one value
        kept = tuple(kv for kv in spec.env.variables if kv[0] != name)
        spec = replace(spec, env=replace(spec.env, variables=kept))
    new = data.draw(var_value.filter(lambda v: v != value))
    changed = (*spec.variables[:i], (name, new), *spec.variables[i + 1 :])
    assert spec_key(replace(spec, variables=changed)) != spec_key(spec)


@PROPERTY
@given(
    specs(),
    st.lists(st.sampled_from(PLATFORMS), min_size=2, max_size=2, unique_by=normalize_platform),
)
def test_platform_changes_key(spec: Spec, platforms: list[str]) -> None:
    a, b = platforms
    assert spec_key(replace(spec, platform=a)) != spec_key(replace(spec, platform=b))


@PROPERTY
@given(specs(), st.lists(sha, min_size=2, max_size=2, unique=True))
def test_base_digest_changes_key(spec: Spec, digests: list[str]) -> None:
    name = spec.base.split("@")[0]
    written = [spec_key(replace(spec, base=f"{name}@sha256:{d}")) for d in digests]
    assert written[0] != written[1]
    parsed = complete_spec(parse_spec_text(canonical_yaml(envctl_tree(spec)), "spec.yml"))
    pinned = [parsed.base_image.with_digest(f"sha256:{d}") for d in digests]
    resolved = [compute_key(parsed.with_base_image(image)) for image in pinned]
    assert resolved[0] != resolved[1]


@PROPERTY
@given(specs(), dep, pip_req)
def test_dependency_added_or_removed_changes_key(spec: Spec, new_dep: Dep, new_pip: PipReq) -> None:
    env = spec.env or Env()
    assume(new_dep.name not in {d.name for d in env.deps})
    assume(new_pip.parts not in {p.parts for p in env.pip})
    without = replace(spec, env=env)
    added_dep = replace(spec, env=replace(env, deps=(*env.deps, new_dep)))
    added_pip = replace(spec, env=replace(env, pip=(*env.pip, new_pip)))
    keys = {spec_key(without), spec_key(added_dep), spec_key(added_pip)}
    assert len(keys) == 3  # adding either changes the key; removing it is the reverse change


# ---------------------------------------------------------------- different key: build context


CONTEXT_SPEC = "base_image: ubuntu\ncontext: ctx\ndocker_steps: |\n  COPY . /app\n"


def write_context(root: Path, files: dict[str, bytes]) -> None:
    (root / "spec.yml").write_text(CONTEXT_SPEC)
    for name, content in files.items():
        path = root / "ctx" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)


@PROPERTY
@given(context_files(min_bytes=1), st.data())
def test_context_byte_change_changes_key(files: dict[str, bytes], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(files)))
    at = data.draw(st.integers(0, len(files[name]) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    with tempfile.TemporaryDirectory() as tmp:
        write_context(Path(tmp), files)
        before = compute_key(load_spec(Path(tmp, "spec.yml")))
        content = bytearray(files[name])
        content[at] ^= flip
        Path(tmp, "ctx", name).write_bytes(bytes(content))
        assert compute_key(load_spec(Path(tmp, "spec.yml"))) != before


@PROPERTY
@given(context_files(), st.data())
def test_context_mode_change_changes_key(files: dict[str, bytes], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(files)))
    with tempfile.TemporaryDirectory() as tmp:
        write_context(Path(tmp), files)
        before = compute_key(load_spec(Path(tmp, "spec.yml")))
        path = Path(tmp, "ctx", name)
        path.chmod(os.stat(path).st_mode | 0o111)  # chmod +x
        assert compute_key(load_spec(Path(tmp, "spec.yml"))) != before


# ---------------------------------------------------------------- purity


@PROPERTY
@given(specs())
def test_compute_key_is_pure(spec: Spec) -> None:
    text = canonical_yaml(envctl_tree(spec))
    parsed = complete_spec(parse_spec_text(text, "spec.yml"))
    first, second = compute_key(parsed), compute_key(parsed)
    assert first == second == key_of(text)
    assert is_key(first)
    assert canonical_json(parsed).startswith('["envctl.key/1",')
