"""builder.render: an image's labels say what it is, the same on every host."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from builder.render import image_labels
from hashing import EnvironmentSpec, complete_spec, compute_key, parse_image, parse_spec_text

DIGEST = "sha256:" + "ab" * 32


def _spec(digest: str | None = DIGEST) -> EnvironmentSpec:
    spec = complete_spec(parse_spec_text("base_image: debian:bookworm\n", "spec.yml"))
    image = parse_image("debian:bookworm")
    return replace(spec, base_image=image.with_digest(digest) if digest else image)


def test_the_labels_name_the_key_the_locks_and_the_base_by_digest() -> None:
    spec = _spec()
    key = compute_key(spec)
    labels = dict(image_labels(spec, key, "conda lock", "pip lock", version="9.9"))
    assert labels == {
        "org.envctl.key": key,
        "org.envctl.platform": "linux/amd64",
        "org.envctl.version": "9.9",
        "org.envctl.conda-lock.sha256": hashlib.sha256(b"conda lock").hexdigest(),
        "org.envctl.pip-lock.sha256": hashlib.sha256(b"pip lock").hexdigest(),
        "org.opencontainers.image.base.digest": DIGEST,
        "org.opencontainers.image.base.name": f"docker.io/library/debian@{DIGEST}",
    }
    without = dict(image_labels(spec, key, None, None, version="9.9"))
    assert "org.envctl.conda-lock.sha256" not in without
    assert "org.envctl.pip-lock.sha256" not in without


def test_a_base_not_pinned_by_digest_is_refused() -> None:
    spec = _spec(None)
    with pytest.raises(ValueError, match="not pinned"):
        image_labels(spec, compute_key(spec), None, None, version="1")
