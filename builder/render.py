"""What an image says about itself: its labels. Pure.

    image_labels(spec, key, conda_lock, pip_lock, version=…) -> sorted (name, value) pairs

Nothing here reads a file, the clock or the environment: the same inputs give the same labels
on every machine, so they cannot make two hosts' images differ.
"""

from __future__ import annotations

import hashlib

from hashing import EnvironmentSpec, EnvKey


def image_labels(
    spec: EnvironmentSpec,
    key: EnvKey,
    conda_lock: str | None,
    pip_lock: str | None,
    *,
    version: str,
) -> tuple[tuple[str, str], ...]:
    """The labels of `spec`'s image, keyed `key`, built by envctl `version` from those locks:
    what the image is, what it was installed from, and its base by digest (OCI's annotations).
    ValueError when the base image is not pinned by digest."""
    base = spec.base_image
    if base.digest is None:
        raise ValueError(f"the base image {base} is not pinned: resolve it to a digest first")
    labels = {
        "org.envctl.key": key,
        "org.envctl.platform": spec.platform,
        "org.envctl.version": version,
        "org.opencontainers.image.base.digest": base.digest,
        # by digest: the tag is not part of the key, so it must not be part of the image
        "org.opencontainers.image.base.name": f"{base.name}@{base.digest}",
    }
    if conda_lock is not None:
        labels["org.envctl.conda-lock.sha256"] = hashlib.sha256(conda_lock.encode()).hexdigest()
    if pip_lock is not None:
        labels["org.envctl.pip-lock.sha256"] = hashlib.sha256(pip_lock.encode()).hexdigest()
    return tuple(sorted(labels.items()))
