from __future__ import annotations

import pytest

from hashing.errors import SpecError
from hashing.formats import parse_spec_text
from hashing.imageref import InvalidReference, normalize_platform, parse_image

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("library/ubuntu", "docker.io/library/ubuntu:latest"),
        ("docker.io/library/ubuntu:latest", "docker.io/library/ubuntu:latest"),
        ("index.docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("pytorch/pytorch:latest", "docker.io/pytorch/pytorch:latest"),
        ("127.0.0.1:5001/base/debian:bookworm", "127.0.0.1:5001/base/debian:bookworm"),
        ("localhost/x", "localhost/x:latest"),
        ("nvcr.io/nvidia/pytorch:22.02-py3", "nvcr.io/nvidia/pytorch:22.02-py3"),
        (f"ubuntu@{DIGEST}", f"docker.io/library/ubuntu@{DIGEST}"),
    ],
)
def test_references_normalize_the_way_docker_does(text: str, expected: str) -> None:
    assert str(parse_image(text)) == expected


def test_a_digest_decides_the_image_and_its_tag_does_not() -> None:
    with_tag = parse_image(f"ubuntu:22.04@{DIGEST}")
    without = parse_image(f"docker.io/library/ubuntu@{DIGEST}")
    assert (
        with_tag.canonical()
        == without.canonical()
        == {
            "name": "docker.io/library/ubuntu",
            "digest": DIGEST,
        }
    )
    assert with_tag.pinned


def test_a_tag_is_unpinned_until_resolved() -> None:
    image = parse_image("ubuntu:22.04")
    assert not image.pinned
    assert image.canonical() == {"name": "docker.io/library/ubuntu", "tag": "22.04"}
    assert image.with_digest(DIGEST).canonical()["digest"] == DIGEST


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Ubuntu", "lowercase"),
        ("foo bar", "invalid image reference"),
        ("ubuntu@sha256:abc", "invalid image reference"),
        ("ubuntu@md5:" + "a" * 32, "sha256 only"),
        ("", "empty"),
        ("-leading/dash", "invalid image reference"),
    ],
)
def test_invalid_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason):
        parse_image(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("Linux/x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
    ],
)
def test_platforms_normalize_like_containerd(text: str, expected: str) -> None:
    assert normalize_platform(text) == expected


def test_a_platform_needs_os_and_arch() -> None:
    with pytest.raises(InvalidReference, match="os/arch"):
        normalize_platform("linux")


@pytest.mark.parametrize(
    "platform", ["linux/bogus", "windows/amd64", "linux/mips64", "darwin/arm64"]
)
def test_a_platform_envctl_cannot_build_is_refused_where_it_is_written(platform: str) -> None:
    with pytest.raises(InvalidReference, match="does not build for"):
        normalize_platform(platform)
    with pytest.raises(SpecError) as caught:
        parse_spec_text(f"base_image: busybox\nplatform: {platform}\n", "env.yml")
    assert (caught.value.line, caught.value.field) == (2, "platform")
