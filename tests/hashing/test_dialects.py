"""conda's dialects as their own tools read them: conda-lock's keys and comment selectors,
micromamba's `sel()`, pip's per-requirement `--hash` and option lines; evaluated for the image's
platform, and the key is of the environment after selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.conda import solve
from hashing import EnvctlError, SpecError
from hashing.conda import CondaEnvironment, parse_conda, selector_holds
from hashing.yamldoc import load_yaml
from tests.conftest import Services


def _env(text: str, platform: str = "linux/amd64") -> CondaEnvironment:
    return parse_conda(load_yaml(text, "environment.yml"), platform=platform)[0]


def _error(text: str, platform: str = "linux/amd64") -> SpecError:
    with pytest.raises(SpecError) as info:
        _env(text, platform)
    return info.value


PLAIN = "channels: [local]\ndependencies:\n  - envctl-hello\n  - pip:\n    - requests\n"


def test_a_comment_selector_that_does_not_hold_is_as_if_the_line_were_absent() -> None:
    selected = _env(
        "channels: [local]\ndependencies:\n"
        "  - envctl-hello  # [linux64]\n"
        "  - envctl-data  # [osx]\n"
        "  - clang_osx-arm64  # [arm64]\n"
        "  - pip:\n    - requests  # [unix and not win]\n    - pywin32  # [win]\n"
    )
    assert selected == _env(PLAIN)
    assert selected.dependencies == ("envctl-hello",)
    on_arm = _env("dependencies:\n  - a  # [linux64]\n  - b  # [aarch64]\n", "linux/arm64")
    assert on_arm.dependencies == ("b",)


def test_a_bracketed_comment_that_is_no_platform_selector_stays_a_comment() -> None:
    # conda-lock's own reader would drop this line; Azure ML installs it
    env = _env("dependencies:\n  - pandas>=1 # explicitly install for [document_parsing]\n"
               "  - numpy  # [py>=38]\n  - scipy  # pinned [see issue 12]\n")  # fmt: skip
    assert env.dependencies == ("numpy", "pandas >=1", "scipy")


@pytest.mark.parametrize(
    ("expression", "linux64", "aarch64"),
    [
        ("linux", True, True),
        ("linux64", True, False),
        ("not linux", False, False),
        ("unix and not aarch64", True, False),
        ("osx or win", False, False),
        ("(linux and x86_64) or aarch64", True, True),
        ("not (osx or win)", True, True),
    ],
)
def test_platform_selectors_and_their_boolean_combinations(
    expression: str, linux64: bool, aarch64: bool
) -> None:
    assert selector_holds(expression, "linux-64") is linux64
    assert selector_holds(expression, "linux-aarch64") is aarch64


def test_a_broken_platform_selector_is_an_error_on_its_line() -> None:
    error = _error("dependencies:\n  - a\n  - b  # [linux and]\n")
    assert (error.line, error.field) == (3, "dependencies[1]")
    assert "selector [linux and]" in error.message


def test_micromamba_sel_is_evaluated_for_the_platform() -> None:
    env = _env("dependencies:\n  - sel(linux): envctl-hello\n  - sel(osx): lldb\n"
               "  - sel(win): pywin32\n  - sel(unix): envctl-data >=1\n")  # fmt: skip
    assert env.dependencies == ("envctl-data >=1", "envctl-hello")
    error = _error("dependencies:\n  - sel(py38): numpy\n")
    assert error.line == 2
    assert "sel(py38): not a platform selector" in error.message


def test_conda_lock_keys_are_read_and_a_missing_platform_is_an_error() -> None:
    listed = _env(
        "category: dev\nallow-pypi-requests: true\n"
        "pip-repositories: ['http://$PIP_USER:$PIP_PASSWORD@127.0.0.1:9/simple']\n"
        "platforms: [linux-64, osx-arm64]\n" + PLAIN
    )
    assert listed == _env(PLAIN)  # none of them changes the image: the key is the same
    assert _env("platform: [linux-64]\n" + PLAIN) == _env(PLAIN)
    error = _error("platforms:\n  - osx-arm64\n  - win-64\n" + PLAIN)
    assert (error.line, error.field) == (1, "platforms")
    assert "osx-arm64, win-64" in error.message
    assert "linux/amd64 (linux-64)" in error.message
    error = _error("allow-pypi-requests: false\n" + PLAIN)
    assert error.field == "allow-pypi-requests"
    assert _env("allow-pypi-requests: false\ndependencies: [envctl-hello]\n").dependencies


def test_pip_hashes_are_read_and_keyed_and_option_lines_split() -> None:
    one = _env("dependencies:\n  - pip:\n    - flit-core === 3.9.0 --hash=sha256:AB12\n")
    assert one.pip == ("flit-core===3.9.0 --hash=sha256:ab12",)
    other = _env("dependencies:\n  - pip:\n    - flit-core===3.9.0 --hash=sha256:cd34\n")
    assert other != one  # which file may be installed is part of the environment
    spaced = _env("dependencies:\n  - pip:\n    - flit-core===3.9.0 --hash sha256:ab12\n")
    assert spaced == one
    error = _error("dependencies:\n  - pip:\n    - numpy --global-option=x\n")
    assert "--hash" in error.message
    assert error.line == 3
    lines = _env("dependencies:\n  - pip:\n    - --pre --index-url http://127.0.0.1:9/simple\n"
                 "    - numpy\n")  # fmt: skip
    assert lines.pip_options == ("--pre", "--index-url=http://127.0.0.1:9/simple")


def test_an_empty_dependencies_key_is_an_empty_environment() -> None:
    assert _env("name: nlp\nchannels: [local]\ndependencies:\n").dependencies == ()


def test_each_dialect_solves_on_the_local_channel_with_the_right_packages(
    services: Services, tmp_path: Path
) -> None:
    text = (
        f"channels: [{services.channels}]\nplatforms: [linux-64]\ncategory: main\n"
        "dependencies:\n  - envctl-greet  # [linux64]\n  - envctl-conflict-a  # [osx]\n"
        "  - sel(linux): envctl-data\n  - sel(win): envctl-conflict-b\n"
    )
    lock = solve(_env(text), platform="linux/amd64", channels=None, cache_dir=tmp_path)
    names = sorted(p.name for p in lock.packages)
    assert names == ["envctl-data", "envctl-greet", "envctl-hello"]


def test_every_error_is_a_spec_error() -> None:
    for text in ("platforms: linux-64\n" + PLAIN, "dependencies:\n  - sel(linux): [a, b]\n"):
        with pytest.raises(EnvctlError):
            _env(text)


@pytest.mark.parametrize(
    "line", [r"numpy\n--index-url=http://127.0.0.1:9/", r"num\rpy", r"numpy\0"]
)
def test_a_pip_line_with_a_control_character_is_refused_on_its_line(line: str) -> None:
    error = _error(f'dependencies:\n  - pip:\n    - "{line}"\n')  # YAML's escapes
    assert "control character" in error.message
    assert error.line == 3


def test_a_tab_inside_a_pip_line_is_whitespace_as_pip_reads_it() -> None:
    assert _env('dependencies:\n  - pip:\n    - "numpy\\t==1.26.4"\n').pip == ("numpy==1.26.4",)
