from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing.conda import normalize_match_spec, parse_conda
from hashing.imageref import parse_image
from hashing.key import compute_key
from hashing.pip import _fast_requirement, _requirement, normalize_pip_line
from hashing.spec import EnvironmentSpec
from hashing.yamldoc import load_yaml


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("numpy >=1.20", "numpy>=1.20"),
        ("numpy >= 1.20", "numpy>=1.20"),
        ("numpy=1.20", "numpy 1.20.*"),
        ("NumPy", "numpy"),
        ("scikit-learn[version='>=1.0']", "scikit-learn >=1.0"),
    ],
)
def test_match_specs_conda_reads_the_same_normalize_the_same(a: str, b: str) -> None:
    assert normalize_match_spec(a) == normalize_match_spec(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("numpy=1.20", "numpy==1.20"),  # 1.20.* vs exactly 1.20
        ("numpy", "numpy >=1"),
        ("conda-forge::numpy", "numpy"),
    ],
)
def test_match_specs_conda_reads_differently_stay_different(a: str, b: str) -> None:
    assert normalize_match_spec(a) != normalize_match_spec(b)


def test_conda_env_export_pins_with_build_strings_are_accepted() -> None:
    assert normalize_match_spec("python=3.8.13=h12debd9_0") == "python ==3.8.13 h12debd9_0"


@pytest.mark.parametrize("bad", ["numpy>>1", "", ">=1.2"])
def test_invalid_match_specs_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="match spec"):
        normalize_match_spec(bad)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Scikit_Learn>=1.0", (False, "scikit-learn>=1.0")),
        ("scikit.learn >= 1.0", (False, "scikit-learn>=1.0")),
        ("numpy >= 1.2, <2", (False, "numpy<2,>=1.2")),
        ("numpy<2,>=1.2", (False, "numpy<2,>=1.2")),
        ("A[Y,x]==1", (False, "a[x,y]==1")),
        ('b ; python_version >= "3.8"', (False, 'b ; python_version >= "3.8"')),
        ("req @ https://example.invalid/r.whl", (False, "req @ https://example.invalid/r.whl")),
        ("git+https://example.invalid/x.git", (False, "git+https://example.invalid/x.git")),
        ("--extra-index-url=https://example.invalid/", (True, "--extra-index-url=https://example.invalid/")),
        ("--extra-index-url  https://example.invalid/", (True, "--extra-index-url=https://example.invalid/")),
        ("-i https://example.invalid/simple", (True, "-i https://example.invalid/simple")),
    ],
)  # fmt: skip
def test_pip_lines_normalize_by_pep_503_and_508(line: str, expected: tuple[bool, str]) -> None:
    assert normalize_pip_line(line) == expected


@pytest.mark.parametrize("bad", ["bad req !!", "", "numpy>=="])
def test_invalid_pip_requirements_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="pip requirement"):
        normalize_pip_line(bad)


_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_ops = st.sampled_from(["==", "!=", ">=", "<=", ">", "<", "~=", "==="])
_versions = st.from_regex(
    r"[0-9]{1,2}(\.[0-9]{1,2}){0,2}(\.\*|rc1|\+cu118|\.post1)?", fullmatch=True
)
_spaces = st.sampled_from(["", " ", "  "])


@st.composite
def _requirements(draw: st.DrawFn) -> str:
    text = draw(_names)
    if draw(st.booleans()):
        text += "[" + ", ".join(draw(st.lists(_names, min_size=1, max_size=3))) + "]"
    clauses = draw(st.lists(st.tuples(_ops, _spaces, _versions), max_size=3))
    text += draw(_spaces) + ",".join(f"{op}{sp}{v}" for op, sp, v in clauses)
    return text


@settings(max_examples=400, deadline=None)
@given(_requirements())
def test_the_fast_path_reads_requirements_exactly_as_packaging_does(line: str) -> None:
    fast = _fast_requirement(line)
    try:
        slow = _requirement(line)
    except ValueError:
        assert fast is None, f"fast path accepted what packaging rejects: {line!r}"
        return
    assert fast in (None, slow)


@pytest.mark.parametrize(
    "line",
    ["-r requirements.txt", "--requirement=reqs.txt", "-c constraints.txt", "-e ./local",
     "--editable .", "./localpkg", "/abs/pkg.whl", "file:///tmp/x.whl"],
)  # fmt: skip
def test_pip_lines_naming_local_files_are_refused(line: str) -> None:
    with pytest.raises(ValueError, match="cannot key"):
        normalize_pip_line(line)


@pytest.mark.parametrize(
    "line",
    ["--log=/tmp/pip.log", "--log /tmp/pip.log", "--cert=/root/ca.pem", "--src /root",
     "--target=/etc", "--trusted-host", "--pre=1", "--no-binary=:all:", "-iURL", "--proxy=x"],
)  # fmt: skip
def test_pip_options_outside_the_allowlist_are_refused(line: str) -> None:
    """pip runs on the builder host: an option naming a host path must not get there."""
    with pytest.raises(ValueError, match=r"pip option|--no-binary"):
        normalize_pip_line(line)


def test_a_specs_own_pip_sources_never_reach_pip() -> None:
    doc = load_yaml(
        "dependencies:\n- pip:\n  - --extra-index-url https://example.invalid/x\n"
        "  - --find-links=/root\n  - -i https://example.invalid/i\n  - --no-index\n"
        "  - --trusted-host example.invalid\n  - --pre\n  - '--only-binary=:all:'\n  - numpy\n",
        "env.yml",
    )
    env, _ = parse_conda(doc)
    spec = EnvironmentSpec(base_image=parse_image("ubuntu"), conda=env)
    assert env.pip_arguments == ("--pre",), "without the operator's sources pip uses none"
    plain = spec.with_package_sources()
    assert plain.conda is not None
    assert plain.conda.pip_arguments == ("--pre",)
    assert plain.conda.pip_options == ("--pre", "--only-binary=:all:")
    operator = spec.with_package_sources(
        pip_index_url="https://example.invalid/op", pip_find_links=("/srv/wheels",)
    )
    assert operator.conda is not None
    assert operator.conda.pip_arguments == (
        "--index-url=https://example.invalid/op", "--find-links=/srv/wheels", "--pre",
    )  # fmt: skip
    assert compute_key(operator) != compute_key(plain), "the operator's sources are keyed"
