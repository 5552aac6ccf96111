"""builder.render: the Dockerfile text, pinned by snapshots in fixtures/snapshots/render/.

Each case renders a spec written inline below and compares the Dockerfile (and requirements.txt,
when there is one) byte for byte with its snapshot. A change in rendering fails here on purpose:
look at the diff, and when it is intended, regenerate the snapshots with

    ENVCTL_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/builder/test_render.py

and commit them with the change. Nothing else writes them. (Whether the rendered text builds
and sets variables exactly is tested on the real engine in test_docker.py.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import render as render_module
from builder.render import BuildContext, env_prefix, render
from hashing import (
    ContextEntry,
    ContextManifest,
    EnvironmentSpec,
    complete_spec,
    compute_key,
    parse_conda_text,
    parse_dockerfile,
    parse_spec_text,
)
from tests.conftest import FIXTURES

SNAPSHOTS = FIXTURES / "snapshots" / "render"
UPDATE = os.environ.get("ENVCTL_UPDATE_SNAPSHOTS") == "1"
DIGEST = "sha256:" + "ab" * 32
LOCK = "version: 1\nmetadata: {}\npackage: []\n"  # only its sha256 reaches the Dockerfile
VERSION = "0.1.0"
PIP_LOCK = (
    f"requests==2.32.3 --hash=sha256:{'c' * 64}\nscikit-learn==1.5.0 --hash=sha256:{'d' * 64}\n"
)


def _pip_lock(spec: EnvironmentSpec) -> str | None:
    """The pip lock a build would pass: the resolution of the spec's pip requirements."""
    return PIP_LOCK if spec.conda is not None and spec.conda.pip else None


def _spec(text: str, **files: Any) -> EnvironmentSpec:
    return complete_spec(parse_spec_text(text, "spec.yml"), **files)


CASES: dict[str, tuple[EnvironmentSpec, str | None]] = {
    "no-conda": (
        _spec(
            f"base_image: debian:bookworm@{DIGEST}\n"
            "docker_steps: |\n"
            "  run apt-get update && \\\n"
            "      apt-get install -y --no-install-recommends curl\n"
            "  USER 1000\n"
        ),
        None,
    ),
    "conda": (
        _spec(
            f"base_image: 127.0.0.1:5001/base/debian:bookworm@{DIGEST}\n"
            "conda:\n"
            "  channels: [conda-forge]\n"
            "  dependencies: [python=3.11, numpy>=1.26]\n"
        ),
        LOCK,
    ),
    "conda-pip-variables-steps": (
        _spec(
            f"base_image: registry.example.com/ml/base:2024.05@{DIGEST}\n"
            "platform: linux/arm64\n"
            "conda:\n"
            "  name: ignored\n"
            "  channels: [conda-forge]\n"
            "  dependencies:\n"
            "    - python=3.11\n"
            "    - pip\n"
            "    - pip:\n"
            "        - Requests>=2.31\n"
            "        - --extra-index-url https://pypi.example.com/simple\n"
            "        - scikit_learn==1.5.0\n"
            "  variables: {OMP_NUM_THREADS: '4'}\n"
            "variables:\n"
            '  GREETING: "say \\"hi\\" to $USER, C:\\\\temp\\\\"\n'
            "  EMPTY: ''\n"
            "  SPACES: '  padded  '\n"
            "docker_steps: |\n"
            '  ENV A=1   B="x y"\n'
            "  ENV OLD some words\n"
            '  HEALTHCHECK --interval=30s CMD ["curl", "-f", "http://localhost/"]\n'
            '  CMD ["python", "-m", "app"]\n'
        ),
        LOCK,
    ),
    "context": (
        _spec(
            "build: {path: context}\nconda_file: env.yml\n",
            conda=parse_conda_text("dependencies: [python=3.12]\n", "env.yml"),
            dockerfile=parse_dockerfile(
                f"FROM python:3.12@{DIGEST}\n"
                "COPY --chown=1000:1000 app/ /srv/app/\n"
                "WORKDIR /srv/app\n"
                "RUN pip install -e .\n"
                'ENTRYPOINT ["python", "-m", "app"]\n',
                "context/Dockerfile",
            ),
            context=ContextManifest(
                (
                    ContextEntry("app", "dir", 0o755),
                    ContextEntry("app/__main__.py", "file", 0o644, "0" * 32),
                    ContextEntry("app/setup.py", "file", 0o644, "1" * 32),
                )
            ),
        ),
        LOCK,
    ),
}


def _render(name: str) -> BuildContext:
    spec, lock = CASES[name]
    return render(spec, compute_key(spec), lock, pip_lock=_pip_lock(spec), version=VERSION)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendering_matches_its_snapshot(name: str) -> None:
    context = _render(name)
    files = {f"{name}.Dockerfile": context.dockerfile}
    if context.pip_requirements is not None:
        files[f"{name}.requirements.txt"] = context.pip_requirements
    for file, text in files.items():
        path = SNAPSHOTS / file
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"no snapshot {path}: run with ENVCTL_UPDATE_SNAPSHOTS=1"
        assert text == path.read_text(), f"{file} differs from its snapshot"
    stale = {p.name for p in SNAPSHOTS.glob(f"{name}.*")} - set(files)
    assert not stale, f"snapshots no longer rendered: {stale}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_dockerfile_parses_back_into_the_spec_steps(name: str) -> None:
    spec, _ = CASES[name]
    parsed = parse_dockerfile(_render(name).dockerfile, "rendered")
    assert parsed.base_image.digest == spec.base_image.digest
    assert parsed.steps[len(parsed.steps) - len(spec.docker_steps) :] == spec.docker_steps
    assert parsed.platform == spec.platform


def test_the_context_shape_follows_the_spec() -> None:
    plain = _render("no-conda")
    assert (plain.env_dir, plain.pip_requirements) == (None, None)
    full = _render("conda-pip-variables-steps")
    assert full.env_dir == ".envctl/env"
    assert full.pip_requirements == PIP_LOCK
    spec, _ = CASES["conda-pip-variables-steps"]
    labels = dict(full.labels)
    assert labels["org.envctl.key"] == compute_key(spec)
    assert labels["org.envctl.version"] == VERSION
    assert labels["org.opencontainers.image.base.digest"] == DIGEST
    assert list(full.labels) == sorted(full.labels)


def test_the_environment_lives_at_its_key_under_the_prefix_root() -> None:
    spec, lock = CASES["conda"]
    key = compute_key(spec)
    context = render(spec, key, lock, prefix_root="/envs/", version=VERSION)
    assert f"COPY .envctl/env /envs/{key}\n" in context.dockerfile
    assert env_prefix(key, "/envs/") == f"/envs/{key}"


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(sorted(CASES)))
def test_rendering_is_deterministic(name: str) -> None:
    assert _render(name) == _render(name)


def test_equal_specs_render_equal_text() -> None:
    a = _spec(f"base_image: debian@{DIGEST}\ndocker_steps: |\n  run   echo  hi\n")
    b = _spec(f"base_image: docker.io/library/debian@{DIGEST}\ndocker_steps: RUN echo  hi\n")
    assert a == b
    assert render(a, compute_key(a), None, version=VERSION) == render(
        b, compute_key(b), None, version=VERSION
    )


@pytest.mark.parametrize(
    ("text", "lock", "message"),
    [
        ("base_image: debian:bookworm\n", None, "not pinned"),
        (
            f"base_image: debian@{DIGEST}\nconda: {{dependencies: [python]}}\n",
            None,
            "needs the lock",
        ),
        (f"base_image: debian@{DIGEST}\n", LOCK, "without conda packages"),
    ],
)
def test_inputs_that_cannot_render_are_value_errors(
    text: str, lock: str | None, message: str
) -> None:
    spec = _spec(text)
    with pytest.raises(ValueError, match=message):
        render(spec, compute_key(spec), lock, version=VERSION)


def test_a_label_value_that_cannot_be_written_is_refused() -> None:
    spec, _ = CASES["no-conda"]
    with pytest.raises(ValueError, match="newline"):
        render(spec, compute_key(spec), None, version="1\n2")


def test_pip_without_conda_packages_uses_the_base_python() -> None:
    spec = _spec(f"base_image: python@{DIGEST}\nconda: {{dependencies: [{{pip: [rich]}}]}}\n")
    pins = f"rich==13.0.0 --hash=sha256:{'e' * 64}\n"
    context = render(spec, compute_key(spec), None, pip_lock=pins, version=VERSION)
    assert (context.env_dir, context.pip_requirements) == (None, pins)
    assert "COPY .envctl/env" not in context.dockerfile
    assert "RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-deps" in context.dockerfile
    with pytest.raises(ValueError, match="pip lock"):
        render(spec, compute_key(spec), None, version=VERSION)


def test_an_odd_prefix_root_is_refused() -> None:
    spec, lock = CASES["conda"]
    with pytest.raises(ValueError, match="prefix root"):
        render(spec, compute_key(spec), lock, prefix_root="/opt/my envs", version=VERSION)


# ------------------------------------------------------------------------------ purity


_IO_EVENTS = ("open", "os.", "socket.", "subprocess.", "shutil.", "glob.", "urllib.", "http.")


@contextmanager
def _audited() -> Iterator[list[str]]:
    """Collect I/O audit events (PEP 578) raised by this thread while the block runs."""
    events: list[str] = []
    active = [True]

    def hook(event: str, _: tuple[Any, ...]) -> None:
        if active[0] and event.startswith(_IO_EVENTS):
            events.append(event)

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet after the block
    try:
        yield events
    finally:
        active[0] = False


class _Tripwire(dict[str, str]):
    def __getitem__(self, name: str) -> str:
        raise AssertionError(f"render read the environment variable {name}")

    def get(self, name: str, default: Any = None) -> Any:
        raise AssertionError(f"render read the environment variable {name}")


def test_render_does_no_io_and_reads_no_clock_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec, lock = CASES["conda-pip-variables-steps"]
    key = compute_key(spec)
    expected = render(
        spec, key, lock, pip_lock=_pip_lock(spec), version=VERSION
    )  # warm: imports may open files
    import time

    for clock in ("time", "time_ns", "monotonic", "perf_counter", "localtime", "gmtime"):
        monkeypatch.setattr(time, clock, _forbidden(clock))
    monkeypatch.setattr(os, "environ", _Tripwire())
    monkeypatch.setattr(os, "getenv", _forbidden("os.getenv"))
    with _audited() as events:
        again = render(spec, key, lock, pip_lock=_pip_lock(spec), version=VERSION)
    assert events == []
    assert again == expected
    imported = {getattr(v, "__name__", "") for v in vars(render_module).values()}
    assert not imported & {"os", "time", "datetime", "pathlib", "subprocess", "socket", "random"}


def _forbidden(name: str) -> Any:
    def call(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"render called {name}")

    return call


def test_snapshot_files_are_the_ones_rendered() -> None:
    """No snapshot is left behind for a case that was removed."""
    names = {p.name.split(".", 1)[0] for p in SNAPSHOTS.iterdir()} if SNAPSHOTS.exists() else set()
    assert names <= set(CASES)
