"""The resolve request: a spec sent by content gets the spec, and key, it has on disk."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specio.received as received_module
from hashing import EnvironmentSpec, SpecError, compute_key, parse_image
from specio.context import copy_context, scan_context
from specio.files import load_spec
from specio.received import _escapes, _Sent, spec_from_request
from specio.request import ResolveRequest, SpecFile, request_from_file
from tests.conftest import CORPUS, EXAMPLES, needs_corpus, write_tree
from tests.specio.test_corpus import BASE as BASE_TEXT
from tests.specio.test_corpus import BROKEN, INDEX

BASE = parse_image(BASE_TEXT)
EXAMPLE_SPECS = [
    p
    for p in sorted(EXAMPLES.rglob("*.yml"))
    if not {"ci", "bad"} & set(p.relative_to(EXAMPLES).parts)
]
CORPUS_SPECS = [
    CORPUS / rel for rel in INDEX["conda_files"] + INDEX["environment_definitions"] if rel != BROKEN
]


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _remote(path: Path, context_dir: Path | None = None) -> EnvironmentSpec:
    """The spec the service reads from the request the client sends (through its JSON), its
    context written to `context_dir` if given (as for a build)."""
    wire = request_from_file(path).model_dump_json()
    request = ResolveRequest.model_validate_json(wire)
    return spec_from_request(request, default_base=BASE, context_dir=context_dir)


def _same_key(path: Path, context_dir: Path | None = None) -> EnvironmentSpec:
    remote = _remote(path, context_dir)
    assert compute_key(remote) == compute_key(load_spec(path, default_base=BASE))
    return remote


def _root(spec: EnvironmentSpec) -> Path:
    """Where the service wrote the spec's context for a build."""
    assert spec.context is not None
    assert spec.context.root is not None
    return Path(spec.context.root)


def _sent(path: Path) -> dict[str, SpecFile]:
    return {file.path: file for file in request_from_file(path).files}


@pytest.mark.parametrize(
    "path",
    [
        *EXAMPLE_SPECS,
        *(pytest.param(p, marks=needs_corpus, id=str(p.relative_to(CORPUS))) for p in CORPUS_SPECS),
    ],
    ids=lambda p: str(p.relative_to(EXAMPLES)),
)
def test_every_example_and_corpus_spec_keeps_its_key(path: Path, tmp_path: Path) -> None:
    remote = _same_key(path)  # listed in memory
    if remote.context is not None:  # written for a build, it lists the same; the builder copies it
        assert remote.context.root is None
        written = _same_key(path, tmp_path / "context")
        assert _root(written) == tmp_path / "context"
        assert scan_context(tmp_path / "context").entries == remote.context.entries
        assert written.context is not None
        copy_context(written.context, tmp_path / "copy")


@needs_corpus
def test_the_corpus_and_examples_are_all_there() -> None:
    assert (len(EXAMPLE_SPECS), len(CORPUS_SPECS)) == (7, 142)


def test_the_wire_form_of_an_azure_ml_build() -> None:
    request = request_from_file(EXAMPLES / "azureml" / "environment.yml")
    assert request.name == "environment.yml"
    # its .dockerignore excludes itself and the Dockerfile: both are sent all the same, the one
    # because the spec names it, the other so the service excludes the same files
    assert [(f.path, f.kind) for f in request.files] == [
        ("../environment.yml", "file"),
        ("context", "dir"),
        ("context/.dockerignore", "file"),
        ("context/Dockerfile", "file"),
        ("context/greeting.txt", "file"),
    ]
    greeting = (EXAMPLES / "azureml" / "context" / "greeting.txt").read_bytes()
    assert base64.b64decode(request.files[4].content) == greeting


def test_reading_a_request_touches_no_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """What /v1/hash and resolve?build=false do: a spec with a build context, keyed in memory."""
    path = EXAMPLES / "azureml" / "environment.yml"
    request = request_from_file(path)
    expected = load_spec(path, default_base=BASE)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("disk I/O")

    for name in ("read_text", "read_bytes", "write_bytes", "mkdir", "is_dir", "exists", "open"):
        monkeypatch.setattr(Path, name, boom)
    for name in ("scandir", "open", "mkdir", "stat", "lstat", "rename", "symlink", "chmod"):
        monkeypatch.setattr(os, name, boom)
    spec = spec_from_request(request, default_base=BASE)
    monkeypatch.undo()
    assert compute_key(spec) == compute_key(expected)
    assert spec.context is not None
    assert expected.context is not None
    assert spec.context.entries == expected.context.entries


def test_a_spec_sent_as_an_object_is_the_envctl_format(tmp_path: Path) -> None:
    conda = {"channels": ["conda-forge"], "dependencies": ["numpy >=1.2", {"pip": ["requests"]}]}
    body: dict[str, Any] = {"base_image": "ubuntu", "conda": conda, "variables": {"A": "1"}}
    request = ResolveRequest(spec=body)
    write_tree(tmp_path, {"spec.yml": "base_image: ubuntu\nvariables: {A: '1'}\nconda: env.yml\n"})
    write_tree(
        tmp_path,
        {"env.yml": "channels: [conda-forge]\ndependencies: [numpy>=1.2, {pip: [requests]}]\n"},
    )
    remote = spec_from_request(request, default_base=None)
    assert compute_key(remote) == compute_key(load_spec(tmp_path / "spec.yml"))


def _error(request: ResolveRequest, tmp_path: Path) -> SpecError:
    """The request's error, read as for a build: nothing may be left where it was written."""
    with pytest.raises(SpecError) as info:
        spec_from_request(request, default_base=BASE, context_dir=tmp_path / "build" / "context")
    assert not (tmp_path / "build").exists() or not os.listdir(tmp_path / "build")
    return info.value


def _where(error: SpecError) -> tuple[str | None, int | None, str | None]:
    return error.source, error.line, error.field


def test_errors_in_the_spec_name_it_with_line_and_field(tmp_path: Path) -> None:
    error = _error(ResolveRequest(spec="base_image: ubuntu\nbogus: 1\n", name="e.yml"), tmp_path)
    assert _where(error) == ("e.yml", 2, "bogus")
    body = {"base_image": "ubuntu", "variables": {"A": ["x"]}}
    error = _error(ResolveRequest(spec=body, name="body.json"), tmp_path)
    assert (error.source, error.field) == ("body.json", "variables.A")


def test_errors_in_a_named_file_name_that_file(tmp_path: Path) -> None:
    files = [SpecFile(path="../envs/env.yml", content=_b64("dependencies:\n  - 'numpy>>1'\n"))]
    spec = "image: x\nconda_file: ../envs/./env.yml\n"
    error = _error(ResolveRequest(spec=spec, files=files), tmp_path)
    assert (error.source, error.line) == ("../envs/env.yml", 2)
    files = [SpecFile(path="env.yml", content=_b64(b"\xff\xfe\x00"))]
    error = _error(ResolveRequest(spec="image: x\nconda_file: env.yml\n", files=files), tmp_path)
    assert "not UTF-8" in error.message
    assert _where(error) == ("spec.yml", 2, "conda_file")


@pytest.mark.parametrize(
    ("spec", "files", "field", "line", "message"),
    [
        ("base_image: x\nconda: env.yml\n", [], "conda", 2, "file not found: 'env.yml'"),
        ("base_image: x\nconda: d\n", [SpecFile(path="d", kind="dir")], "conda", 2, "is a dir"),
        ("base_image: x\ncontext: ./ctx/\n", [], "context", 2, "'ctx' is not a directory"),
        (
            "base_image: x\ncontext: ctx\n",
            [SpecFile(path="ctx", content="")],
            "context",
            2,
            "'ctx' is not a directory",
        ),
        (
            "build: {path: ctx, dockerfile_path: Nope}\n",
            [SpecFile(path="ctx", kind="dir")],
            "build.dockerfile_path",
            1,
            "file not found: 'ctx/Nope'",
        ),
        ("base_image: x\nconda: /etc/env.yml\n", [], "conda", 2, "absolute path"),
    ],
)
def test_a_named_file_the_request_lacks_is_reported_where_it_is_named(
    tmp_path: Path, spec: str, files: list[SpecFile], field: str, line: int, message: str
) -> None:
    error = _error(ResolveRequest(spec=spec, files=files), tmp_path)
    assert message in error.message
    assert _where(error) == ("spec.yml", line, field)


def test_the_client_refuses_an_absolute_path_where_the_spec_names_it(tmp_path: Path) -> None:
    write_tree(tmp_path, {"env.yml": "dependencies: [numpy]\n"})
    spec = tmp_path / "spec.yml"
    spec.write_text(f"base_image: x\nconda: {tmp_path / 'env.yml'}\n")
    load_spec(spec)  # fine on disk; cannot be sent
    with pytest.raises(SpecError, match="absolute path") as info:
        request_from_file(spec)
    assert _where(info.value) == (str(spec), 2, "conda")


def _link(path: str, target: str) -> SpecFile:
    return SpecFile(path=path, kind="symlink", mode=0o777, target=target)


_CONDA = "base_image: x\nconda: env.yml\n"


@pytest.mark.parametrize(
    ("files", "source", "message"),
    [
        ([SpecFile(path="/etc/passwd")], "files[0].path", "absolute path"),
        ([SpecFile(path="")], "files[0].path", "empty path"),
        ([SpecFile(path="a/../env.yml")], "files[0].path", "'..' after a folder name"),
        ([SpecFile(path="./env.yml")], "files[0].path", "'.' segment"),
        ([SpecFile(path="a//b")], "files[0].path", "empty or '.' segment"),
        ([SpecFile(path="a/")], "files[0].path", "empty or '.' segment"),
        ([SpecFile(path="a\0b")], "files[0].path", "not a file name"),
        ([SpecFile(path="\udc80")], "files[0].path", "not a file name"),
        ([SpecFile(path="x" * 256)], "files[0].path", "not a file name"),
        ([SpecFile(path="/".join(["d"] * 513))], "files[0].path", "a path of 1025 bytes"),
        ([_link("l", "t" * 4096)], "files[0].target", "a symlink target of 4096 bytes"),
        ([_link("l", "a\udc80")], "files[0].target", "not a link target"),
        ([_link("l", "a\0")], "files[0].target", "not a link target"),
        ([SpecFile(path="env.yml"), SpecFile(path="env.yml")], "files[1].path", "also files[0]"),
        ([SpecFile(path="env.yml", mode=-1)], "files[0].mode", "not 0 to 0o7777"),
        ([SpecFile(path="env.yml", mode=0o10000)], "files[0].mode", "not 0 to 0o7777"),
        ([SpecFile(path="env.yml", content="!!!!")], "files[0].content", "not base64"),
        ([SpecFile(path="env.yml", content="abc")], "files[0].content", "not base64"),
        ([SpecFile(path="env.yml", content="é")], "files[0].content", "not base64"),
        ([SpecFile(path="d", kind="dir", content="YQ==")], "files[0].content", "no content"),
        ([SpecFile(path="l", kind="symlink")], "files[0].target", "has a target"),
        ([SpecFile(path="f", target="x")], "files[0].target", "has a target"),
        (
            [_link("ctx/l", "/"), SpecFile(path="ctx/l/x")],
            "files[1].path",
            "inside files[0], which is a symlink",
        ),
        (
            [SpecFile(path="a"), SpecFile(path="a/b/c")],
            "files[1].path",
            "inside files[0], which is a file",
        ),
    ],
)
def test_bad_request_files_are_errors_naming_the_field(
    tmp_path: Path, files: list[SpecFile], source: str, message: str
) -> None:
    error = _error(ResolveRequest(spec=_CONDA, files=files), tmp_path)
    assert message in error.message
    assert (error.source, error.line) == (source, None)


@pytest.mark.parametrize(
    ("update", "source"),
    [
        ({"name": "a/b.yml"}, "name"),
        ({"name": ""}, "name"),
        ({"name": ".."}, "name"),
        ({"base_image": "Not An Image!"}, "base_image"),
        ({"spec": {"base_image": "x"}, "format": "conda"}, "format"),
    ],
)
def test_bad_request_fields_are_errors_naming_the_field(
    tmp_path: Path, update: dict[str, Any], source: str
) -> None:
    request = ResolveRequest(spec="dependencies: [numpy]\n").model_copy(update=update)
    assert _error(request, tmp_path).source == source


def _context_request(*entries: SpecFile) -> ResolveRequest:
    spec = "base_image: x\ncontext: ctx\n"
    return ResolveRequest(spec=spec, files=[SpecFile(path="ctx", kind="dir"), *entries])


@pytest.mark.parametrize(
    ("links", "bad"),
    [
        ([_link("ctx/l", "/etc/passwd")], 2),
        ([_link("ctx/l", "../spec.yml")], 2),
        ([_link("ctx/d/l", "../../x")], 2),
        ([_link("ctx/d/l", "..")], None),  # the context root itself: fine
        ([_link("ctx/d/l", ".."), _link("ctx/m", "d/l/..")], 3),  # each inside, the chain not
        ([_link("ctx/a", "b"), _link("ctx/b", "a")], 2),  # a loop
    ],
)
def test_symlinks_leading_out_of_the_context_are_errors(
    tmp_path: Path, links: list[SpecFile], bad: int | None
) -> None:
    request = _context_request(SpecFile(path="ctx/d", kind="dir"), *links)
    if bad is None:
        spec = spec_from_request(request, default_base=None)
        assert spec.context is not None
        return
    error = _error(request, tmp_path)
    assert error.source == f"files[{bad}].target"
    assert error.message.endswith("points outside the build context")


def test_an_unsent_folder_of_the_context_is_an_error(tmp_path: Path) -> None:
    error = _error(_context_request(SpecFile(path="ctx/sub/a.txt")), tmp_path)
    assert (error.source, error.message) == (
        "files",
        "'ctx/sub' is in the build context but not among the request's files",
    )


def test_a_symlink_sent_with_a_mode_it_cannot_have_is_an_error(tmp_path: Path) -> None:
    request = _context_request(SpecFile(path="ctx/l", kind="symlink", mode=0o644, target="."))
    assert _error(request, tmp_path).source == "files[1].mode"


def test_only_entries_of_the_context_folder_are_written(tmp_path: Path) -> None:
    request = _context_request(
        SpecFile(path="ctx/a.txt", content=_b64("a")),
        SpecFile(path="other.txt", content=_b64("o")),
        SpecFile(path="../up.txt", content=_b64("u")),
    )
    spec = spec_from_request(request, default_base=None, context_dir=tmp_path / "context")
    assert os.listdir(_root(spec)) == ["a.txt"]


def test_ignored_files_are_not_sent_and_keys_still_match(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "ctx/.dockerignore": "*.log\nsecret/\n!secret/keep.txt\n",
            "ctx/a.txt": "a",
            "ctx/x.log": "log",
            "ctx/secret/key": "k",
            "ctx/secret/keep.txt": "keep",
            "spec.yml": "base_image: x\ndocker_steps: COPY a.txt /a\ncontext: ctx\n",
        },
    )
    sent = _sent(tmp_path / "spec.yml")
    assert sorted(sent) == ["ctx", "ctx/.dockerignore", "ctx/a.txt", "ctx/secret/keep.txt"]
    spec = _same_key(tmp_path / "spec.yml", tmp_path / "context")
    assert spec.context is not None
    assert [e.path for e in spec.context.entries] == [".dockerignore", "a.txt", "secret/keep.txt"]


def test_self_excluding_ignore_files_are_sent_for_their_rules(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "ctx/.dockerignore": ".dockerignore\nDockerfile\nsecret/\n!secret/keep.txt\n",
            "ctx/.amlignore": ".amlignore\n*.csv\n",
            "ctx/Dockerfile": "FROM ubuntu\nCOPY a.txt /a\n",
            "ctx/a.txt": "a",
            "ctx/data.csv": "1,2",
            "ctx/secret/key": "k",
            "ctx/secret/keep.txt": "keep",
            "spec.yml": "build: {path: ctx}\n",
        },
    )
    sent = _sent(tmp_path / "spec.yml")
    assert sorted(sent) == [
        "ctx",
        "ctx/.amlignore",
        "ctx/.dockerignore",
        "ctx/Dockerfile",
        "ctx/a.txt",
        "ctx/secret/keep.txt",
    ]
    spec = _same_key(tmp_path / "spec.yml", tmp_path / "context")
    assert spec.context is not None
    assert [e.path for e in spec.context.entries] == ["a.txt", "secret/keep.txt"]


def test_a_dockerfile_linked_to_an_ignored_file_is_read_through_the_link(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "ctx/.dockerignore": "docker/\n",
            "ctx/docker/Dockerfile.real": "FROM ubuntu\nRUN true\n",
            "spec.yml": "build: {path: ctx}\n",
        },
    )
    os.symlink("docker/Dockerfile.real", tmp_path / "ctx" / "Dockerfile")
    sent = _sent(tmp_path / "spec.yml")
    assert (sent["ctx/Dockerfile"].kind, sent["ctx/Dockerfile"].target) == (
        "symlink",
        "docker/Dockerfile.real",
    )
    assert "ctx/docker/Dockerfile.real" in sent
    _same_key(tmp_path / "spec.yml", tmp_path / "context")


def test_modes_are_keyed_as_sent_and_written_without_setuid_bits(tmp_path: Path) -> None:
    """A tenant's setuid file must not become a setuid-root file on the host; its mode still
    goes into the key (and, through the builder's archive, into the image)."""
    write_tree(
        tmp_path,
        {
            "ctx/run.sh": "#!/bin/sh\n",
            "ctx/private": "p",
            "ctx/suid": "s",
            "ctx/sgid": "g",
            "ctx/ro/inside.txt": "i",
            "ctx/open/x": "x",
            "spec.yml": "base_image: x\ncontext: ctx\n",
        },
    )
    modes = {"run.sh": 0o755, "private": 0o600, "suid": 0o4755, "sgid": 0o2755}
    modes |= {"ro": 0o555, "open": 0o1777}
    for rel, mode in modes.items():
        os.chmod(tmp_path / "ctx" / rel, mode)
    os.symlink("run.sh", tmp_path / "ctx" / "link")
    os.symlink("ro", tmp_path / "ctx" / "dirlink")
    spec = _same_key(tmp_path / "spec.yml", tmp_path / "context")
    assert spec.context is not None
    listed = {e.path: e.mode for e in spec.context.entries}
    root = _root(spec)
    for rel, mode in modes.items():
        assert listed[rel] == mode, rel
        assert stat.S_IMODE(os.lstat(root / rel).st_mode) == mode & 0o777, rel
    assert (os.readlink(root / "link"), os.readlink(root / "dirlink")) == ("run.sh", "ro")
    copy_context(spec.context, tmp_path / "copy")
    for rel, mode in modes.items():
        assert stat.S_IMODE(os.lstat(tmp_path / "copy" / rel).st_mode) == mode & 0o777, rel


def test_a_written_context_leaves_no_temporary_folder(tmp_path: Path) -> None:
    write_tree(tmp_path, {"ctx/a.txt": "a", "spec.yml": "base_image: x\ncontext: ctx\n"})
    _remote(tmp_path / "spec.yml", tmp_path / "builds" / "b1.context")
    assert os.listdir(tmp_path / "builds") == ["b1.context"]


_names = st.sampled_from(["a", "b", "c.log", "D", "keep.txt", ".hidden"])
_patterns = st.sampled_from(
    ["*.log", "a", "b/", "!b/keep.txt", "**/c.log", "d", "!a/keep.txt", "b", "*", "!*.txt", "a/*"]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.lists(_names, min_size=1, max_size=3).map("/".join), min_size=1, max_size=8),
    st.lists(_patterns, max_size=4),
    st.lists(_patterns, max_size=2),
)
def test_a_context_listed_in_memory_is_listed_as_on_disk(
    tmp_path_factory: pytest.TempPathFactory,
    paths: list[str],
    dockerignore: list[str],
    amlignore: list[str],
) -> None:
    """The service lists a request's context in memory; the client listed it on disk. Whatever
    the tree and ignore rules, the two lists are the same."""
    root = tmp_path_factory.mktemp("tree") / "ctx"
    root.mkdir()
    for rel in paths:
        path = root / rel
        if any(p.is_file() for p in [path, *path.parents] if p != root and p.is_relative_to(root)):
            continue  # a file where a folder would go
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(rel)
    (root / ".dockerignore").write_text("\n".join(dockerignore) + "\n")
    if amlignore:
        (root / ".amlignore").write_text("\n".join(amlignore) + "\n")
    on_disk = scan_context(root)
    sent: dict[str, _Sent] = {}
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*")):
        mode = stat.S_IMODE(os.lstat(root / rel).st_mode)
        if (root / rel).is_dir():
            sent[rel] = _Sent(len(sent), "dir", mode)
        else:
            data = (root / rel).read_bytes()
            sent[rel] = _Sent(len(sent), "file", mode, data, xxhash.xxh3_128_hexdigest(data))
    assert received_module._list(sent, "").entries == on_disk.entries


_parts = st.sampled_from(["..", ".", "a", "b", "l", "m", ""])


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(_parts, min_size=1, max_size=4).map("/".join), min_size=1, max_size=3))
def test_a_symlink_that_does_not_escape_resolves_inside_on_disk(
    tmp_path_factory: pytest.TempPathFactory, targets: list[str]
) -> None:
    """Whatever chain of links `_escapes` accepts, the kernel resolves inside the context."""
    root = tmp_path_factory.mktemp("ctx") / "sub" / "ctx"
    (root / "a" / "b").mkdir(parents=True)
    names = ["a/b/l", "a/m", "l"][: len(targets)]
    inside = {"a": _Sent(0, "dir", 0o755), "a/b": _Sent(1, "dir", 0o755)}
    for name, target in zip(names, targets, strict=False):
        if target:
            os.symlink(target, root / name)
            inside[name] = _Sent(2, "symlink", 0o777, digest=target)
    for name in names:
        if name in inside and not _escapes(name, inside):
            resolved = Path(os.path.realpath(root / name))
            assert resolved.is_relative_to(root.resolve()), (name, inside)
