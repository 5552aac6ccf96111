"""Reading spec files and build contexts from disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash
from docker.utils.build import PatternMatcher
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing import SpecError, compute_key
from specio.context import DockerIgnore, FileHasher, scan_context
from specio.files import MAX_TEXT_BYTES, load_spec
from tests.conftest import write_tree


def _paths(root: Path) -> list[str]:
    return [e.path for e in scan_context(root).entries]


def test_dockerignore_follows_dockers_rules(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            ".dockerignore": "# comment\n*.log\nbuild/\n!build/keep.txt\n**/cache\n",
            "a.txt": "a",
            "x.log": "log",
            "build/out.o": "o",
            "build/keep.txt": "k",
            "deep/er/cache/c": "c",
            "Dockerfile": "FROM x",
        },
    )
    # `build/` itself is excluded; its exception is sent without a directory entry, as docker-py
    # (which the builder uses to send the context) does
    assert _paths(tmp_path) == [
        ".dockerignore",
        "Dockerfile",
        "a.txt",
        "build/keep.txt",
        "deep",
        "deep/er",
    ]


def test_an_excluded_dockerignore_and_dockerfile_are_not_in_the_context(tmp_path: Path) -> None:
    write_tree(
        tmp_path, {".dockerignore": ".dockerignore\nDockerfile\n", "Dockerfile": "F", "a": "a"}
    )
    assert _paths(tmp_path) == ["a"]


def test_amlignore_uses_gitignore_rules(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {".amlignore": "*.csv\ndata/\n", "a.py": "", "x.csv": "", "sub/y.csv": "", "data/d": ""},
    )
    assert _paths(tmp_path) == [".amlignore", "a.py", "sub"]


def test_entries_record_kind_mode_and_content(tmp_path: Path) -> None:
    write_tree(tmp_path, {"run.sh": "#!/bin/sh\n", "d/f": "x"})
    os.chmod(tmp_path / "run.sh", 0o755)
    os.symlink("run.sh", tmp_path / "link")
    entries = {e.path: e for e in scan_context(tmp_path).entries}
    assert (entries["run.sh"].kind, entries["run.sh"].mode) == ("file", 0o755)
    assert entries["run.sh"].digest == xxhash.xxh3_128_hexdigest(b"#!/bin/sh\n")
    assert (entries["link"].kind, entries["link"].digest) == ("symlink", "run.sh")
    assert entries["d"].kind == "dir"


def test_a_large_file_hashes_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 3 + 17)
    (tmp_path / "big").write_bytes(data)
    assert FileHasher().hash(tmp_path / "big", len(data)) == xxhash.xxh3_128_hexdigest(data)


def _context_spec(tmp_path: Path) -> Path:
    write_tree(tmp_path, {"ctx/a.txt": "hello", "ctx/b/c.txt": "c"})
    spec = tmp_path / "spec.yml"
    spec.write_text("base_image: ubuntu\ndocker_steps: COPY a.txt /a\ncontext: ctx\n")
    return spec


def test_any_context_byte_or_mode_changes_the_key(tmp_path: Path) -> None:
    spec = _context_spec(tmp_path)
    first = compute_key(load_spec(spec))
    (tmp_path / "ctx/b/c.txt").write_text("C")
    second = compute_key(load_spec(spec))
    os.chmod(tmp_path / "ctx/b/c.txt", 0o700)
    third = compute_key(load_spec(spec))
    (tmp_path / "ctx/new").write_text("")
    fourth = compute_key(load_spec(spec))
    assert len({first, second, third, fourth}) == 4


def test_timestamps_do_not_change_the_key(tmp_path: Path) -> None:
    spec = _context_spec(tmp_path)
    first = compute_key(load_spec(spec))
    os.utime(tmp_path / "ctx/a.txt", (1, 1))
    assert compute_key(load_spec(spec)) == first


def test_inline_conda_equals_the_same_conda_in_a_file(tmp_path: Path) -> None:
    conda = "channels: [conda-forge]\ndependencies: [numpy >=1.2, {pip: [requests]}]\n"
    write_tree(tmp_path, {"env.yml": "name: x\n" + conda})
    (tmp_path / "by-file.yml").write_text("base_image: ubuntu\nconda: env.yml\n")
    inline = "base_image: ubuntu\nconda:\n" + "".join(f"  {line}\n" for line in conda.splitlines())
    (tmp_path / "inline.yml").write_text(inline)
    assert compute_key(load_spec(tmp_path / "by-file.yml")) == compute_key(
        load_spec(tmp_path / "inline.yml")
    )


@pytest.mark.parametrize(
    ("spec", "field", "line", "message"),
    [
        ("base_image: x\nconda: missing.yml\n", "conda", 2, "file not found"),
        ("base_image: x\ncontext: nowhere\n", "context", 2, "not a directory"),
        ("image: x\nconda_file: missing.yml\n", "conda_file", 2, "missing.yml"),
        ("build: {path: ctx, dockerfile_path: Nope}\n", "build.dockerfile_path", 1, "Nope"),
    ],
)
def test_a_missing_named_file_is_reported_where_it_is_named(
    tmp_path: Path, spec: str, field: str, line: int, message: str
) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "spec.yml").write_text(spec)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(tmp_path / "spec.yml")
    assert (info.value.source, info.value.field, info.value.line) == (
        str(tmp_path / "spec.yml"),
        field,
        line,
    )


def test_errors_inside_a_named_file_name_that_file(tmp_path: Path) -> None:
    write_tree(tmp_path, {"env.yml": "dependencies:\n  - 'numpy>>1'\n", "spec.yml": "image: x\n"})
    (tmp_path / "spec.yml").write_text("image: x\nconda_file: env.yml\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "spec.yml")
    assert (info.value.source, info.value.line) == (str(tmp_path / "env.yml"), 2)


def test_unreadable_files_are_spec_errors(tmp_path: Path) -> None:
    (tmp_path / "bin.yml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(tmp_path / "bin.yml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


_segments = st.sampled_from(
    ["a", "b", "A", "x.log", "build", "keep.txt", ".git", "cache", "Dockerfile"]
)
_pattern_segments = st.sampled_from(
    ["a", "b", "*", "**", "*.log", "build", "?", "[ab]", ".git", "cache", "DOCKERFILE"]
)


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    body = "/".join(draw(st.lists(_pattern_segments, min_size=1, max_size=3)))
    return ("!" if draw(st.booleans()) else "") + ("/" if draw(st.booleans()) else "") + body


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_patterns(), min_size=1, max_size=5),
    st.lists(st.lists(_segments, min_size=1, max_size=4).map("/".join), min_size=1, max_size=8),
)
def test_dockerignore_reads_patterns_exactly_as_docker_py(
    patterns: list[str], paths: list[str]
) -> None:
    ours = DockerIgnore(patterns)
    theirs = PatternMatcher(patterns)
    theirs.patterns.pop()  # docker-py's re-inclusion of .dockerignore, which the daemon undoes
    for path in paths:
        expected = theirs.matches(path)  # type: ignore[arg-type]  # the stub is wrong: str works
        assert ours.excludes(path) == expected, (patterns, path)
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if not any(theirs.matches(a) for a in ancestors):  # type: ignore[arg-type]
            assert ours.excludes(path, ancestors_kept=True) == expected, (patterns, path)


def test_a_spec_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO would wait for a writer and /dev/zero never ends: both are refused unread."""
    fifo = tmp_path / "spec.yml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(SpecError, match="not a regular file"):
            load_spec(path)


def test_a_named_file_larger_than_the_limit_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "environment.yml").write_bytes(b"#" * (MAX_TEXT_BYTES + 1))
    spec = tmp_path / "env.yml"
    spec.write_text("base_image: busybox@sha256:" + "0" * 64 + "\nconda: environment.yml\n")
    with pytest.raises(SpecError, match="larger than 4 MiB") as caught:
        load_spec(spec)
    assert caught.value.line == 2


def test_crlf_spec_files_read_as_before(tmp_path: Path) -> None:
    unix, dos = tmp_path / "unix.yml", tmp_path / "dos.yml"
    text = "base_image: busybox@sha256:" + "0" * 64 + "\nvariables: {A: '1'}\n"
    unix.write_text(text)
    dos.write_bytes(text.replace("\n", "\r\n").encode())
    assert compute_key(load_spec(unix)) == compute_key(load_spec(dos))
