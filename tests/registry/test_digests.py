"""Resolving base-image tags to digests on the real loopback registry."""

from __future__ import annotations

import json
import socket
import uuid

import httpx
import pytest

from hashing import parse_image
from registry import (
    DigestResolver,
    ImageNotFound,
    RegistryUnavailable,
    is_loopback,
    registry_base_url,
)
from registry.base import MANIFEST_TYPES
from tests.conftest import Services


def test_a_tag_resolves_to_the_digest_the_registry_serves(services: Services) -> None:
    image = parse_image(services.base_image)
    url = f"http://{image.domain}/v2/{image.repository}/manifests/{image.tag}"
    served = httpx.head(url, headers={"Accept": ", ".join(MANIFEST_TYPES)})
    with DigestResolver() as resolver:
        pinned = resolver.resolve(image)
    assert pinned.digest == served.headers["Docker-Content-Digest"]
    assert (pinned.name, pinned.tag) == (image.name, image.tag)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_pinned_image_needs_no_registry() -> None:
    image = parse_image(f"127.0.0.1:{_closed_port()}/x@sha256:" + "e" * 64)
    with DigestResolver() as resolver:
        assert resolver.resolve(image) is image


def test_a_missing_tag_is_not_found(services: Services) -> None:
    image = parse_image(f"{services.global_host}/base/debian:no-such-tag")
    with DigestResolver() as resolver, pytest.raises(ImageNotFound) as info:
        resolver.resolve(image)
    assert info.value.status == 404
    assert "no-such-tag" in info.value.endpoint


def test_an_unreachable_registry_raises_and_is_never_a_miss() -> None:
    image = parse_image(f"127.0.0.1:{_closed_port()}/base/x:1")
    with DigestResolver(timeout=2) as resolver, pytest.raises(RegistryUnavailable) as info:
        resolver.resolve(image)
    assert info.value.endpoint.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("domain", "loopback"),
    [
        ("127.0.0.1:5001", True),
        ("localhost", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("registry.example.invalid", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_loopback_registries_speak_plain_http(domain: str, loopback: bool) -> None:
    assert is_loopback(domain) is loopback
    assert registry_base_url(domain).startswith("http://" if loopback else "https://")


def test_configured_insecure_registries_speak_plain_http() -> None:
    url = registry_base_url("registry.example.invalid:5000", ["registry.example.invalid:5000"])
    assert url == "http://registry.example.invalid:5000"


def _move_tag(services: Services, tag: str, note: str) -> str:
    """Point `base/busybox:TAG` in the global registry at a manifest unique to `note` (the
    busybox manifest with an annotation); its digest."""
    image = parse_image(services.busybox_image)
    base = f"http://{image.domain}/v2/{image.repository}/manifests"
    got = httpx.get(f"{base}/{image.tag}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
    manifest = got.json() | {"annotations": {"envctl.test": note}}
    put = httpx.put(
        f"{base}/{tag}",
        content=json.dumps(manifest),
        headers={"Content-Type": got.headers["Content-Type"]},
    )
    assert put.status_code == 201, put.text
    return str(put.headers["Docker-Content-Digest"])


def test_a_resolver_with_a_ttl_notices_a_moved_tag_and_one_without_keeps_its_answer(
    services: Services,
) -> None:
    tag = f"moving-{uuid.uuid4().hex[:12]}"
    image = parse_image(f"{parse_image(services.busybox_image).name}:{tag}")
    before = _move_tag(services, tag, "before")
    with DigestResolver() as keeps, DigestResolver(ttl=0) as follows:
        assert keeps.resolve(image).digest == follows.resolve(image).digest == before
        after = _move_tag(services, tag, "after")
        assert after != before
        assert keeps.resolve(image).digest == before  # a CLI call: one answer per process
        assert follows.resolve(image).digest == after  # a server: the tag's digest now
        remembered = keeps.remembered(image)  # what it can answer without asking
        assert remembered is not None
        assert remembered.digest == before
        assert follows.remembered(image) is None  # its answer is too old to trust


def test_what_a_resolver_holds_is_bounded_whatever_tags_it_is_asked_for(
    services: Services,
) -> None:
    """A workspace names any tags it likes: the resolver keeps the `remember` most recent
    answers, and no lock for a tag once nobody asks for it (missing ones included)."""
    images = [parse_image(i) for i in (services.base_image, services.busybox_image,
                                        services.python_image)]  # fmt: skip
    with DigestResolver(remember=2) as resolver:
        for image in images:
            resolver.resolve(image)
        assert resolver.remembered(images[0]) is None  # the oldest went
        assert all(resolver.remembered(image) is not None for image in images[1:])
        missing = parse_image(services.busybox_image).name
        for n in range(50):
            with pytest.raises(ImageNotFound):
                resolver.resolve(parse_image(f"{missing}:no-such-tag-{n}"))
        assert resolver._locks == {}
