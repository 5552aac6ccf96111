"""The source policy's decisions, on parsed specs (the attacks through the real API are in
tests/security/test_sources.py)."""

from __future__ import annotations

import pytest

from hashing import EnvironmentSpec, SpecError
from hashing.formats import parse_spec_text
from hashing.imageref import parse_image
from hashing.spec import complete_spec
from service.policy import Prefix, SourcePolicy

POLICY = SourcePolicy(
    own=(Prefix.parse("reg.example:5000/ws/a"),),
    allowed=(Prefix.parse("reg.example:5000"), Prefix.parse("index.docker.io/library")),
    others=(Prefix.parse("reg.example:5000/ws"), Prefix.parse("reg.example:5000/ws/a/nested")),
)


def _spec(text: str) -> EnvironmentSpec:
    return complete_spec(parse_spec_text(text, "env.yml"))


@pytest.mark.parametrize(
    ("image", "may"),
    [
        ("reg.example:5000/ws/a/env:1", True),  # its own namespace
        ("reg.example:5000/base/python:3", True),  # an allowed registry
        ("python:3.11", True),  # docker.io/library, allowed by its legacy host name
        ("reg.example:5000/ws/b/env:1", False),  # the workspaces' root is no one's to read
        ("reg.example:5000/ws/a/nested/env:1", False),  # another's, inside its own
        ("reg.example:5000/ws/ab/env:1", False),  # a name prefix is not a namespace
        ("other.example/base:1", False),
        ("someone/image:1", False),  # docker.io, not library
    ],
)
def test_the_most_specific_prefix_decides(image: str, may: bool) -> None:
    spec = _spec(f"base_image: {image}\n")
    if may:
        POLICY.check(spec)
    else:
        with pytest.raises(SpecError) as caught:
            POLICY.check(spec)
        assert (caught.value.source, caught.value.line, caught.value.field) == (
            "env.yml", 1, "base_image",
        )  # fmt: skip


def test_an_earlier_stage_by_index_or_name_is_not_an_image() -> None:
    steps = "  FROM python:3 AS tools\n  FROM base_image\n  COPY --from=0 /a /b\n"
    POLICY.check(
        _spec(f"base_image: python:3\ndocker_steps: |\n{steps}  COPY --from=TOOLS /a /c\n")
    )


def test_url_sources_when_allowed_reach_public_addresses_only() -> None:
    addresses = {"files.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.1"]}
    policy = SourcePolicy(
        own=(), allowed=(Prefix.parse("docker.io/library"),), url_sources=True,
        lookup=lambda host: addresses.get(host, []),
    )  # fmt: skip
    policy.check(_spec("base_image: python:3\ndocker_steps: ADD https://files.example/a /a\n"))
    for url in ("https://mixed.example/a", "https://unknown.example/a", "ftp://files.example/a"):
        with pytest.raises(SpecError) as caught:
            policy.check(_spec(f"base_image: python:3\ndocker_steps: ADD {url} /a\n"))
        assert (caught.value.line, caught.value.field) == (2, "ADD"), url


def test_a_pip_url_requirement_points_at_its_line() -> None:
    text = (
        "base_image: python:3\nconda:\n  dependencies:\n  - pip:\n"
        "    - six\n    - x @ https://files.example/x-1-py3-none-any.whl\n"
    )
    with pytest.raises(SpecError) as caught:
        POLICY.check(_spec(text))
    assert caught.value.line == 6
    assert "pip" in (caught.value.field or "")


def test_prefix_parse_normalizes_docker_hub() -> None:
    assert Prefix.parse("index.docker.io/library/").holds(parse_image("ubuntu"))
    assert not Prefix.parse("docker.io/library").holds(parse_image("quay.io/library/ubuntu"))
