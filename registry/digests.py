"""Resolve an image tag to the digest its registry serves now ("follow" policy).

One manifest HEAD per image, accepting indexes and manifests alike: the digest of whatever the tag
points to (a multi-platform index stays an index; the platform is a separate input of the key).
HTTP, authentication (anonymous bearer tokens for public images) and retries are
`registry.http.RegistryClient`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import httpx

from hashing.imageref import ImageName
from registry.auth import Credentials, CredentialSource, repository_scope
from registry.base import MANIFEST_TYPES
from registry.errors import BaseImageNotFound, RegistryError
from registry.http import (
    DEFAULT_RETRIES,
    RegistryClient,
    RetryPolicy,
    check,
)

REMEMBERED = 4096  # tags a resolver keeps pinned (a spec names a few; a workspace may name many)


class DigestResolver:
    """Resolves tags to digests over HTTP; remembers answers for its own lifetime, or for
    `ttl` seconds (a long-running server must notice a moved tag: that is a new key), the
    `remember` most recent at most. What it holds is bounded whatever tags its callers name:
    the answers, and a lock per tag only while that tag is being asked for."""

    def __init__(
        self,
        *,
        insecure: Iterable[str] = (),
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        credentials: Credentials | CredentialSource | None = None,
        retries: int | RetryPolicy = DEFAULT_RETRIES,
        ttl: float | None = None,
        remember: int = REMEMBERED,
    ) -> None:
        self._http = RegistryClient(
            credentials=credentials,
            insecure=insecure,
            timeout=timeout,
            retries=retries,
            client=client,
        )
        self._ttl = ttl
        self._remember = remember
        self._seen: dict[ImageName, tuple[str, float]] = {}
        self._locks: dict[ImageName, threading.Lock] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> DigestResolver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def resolve(self, image: ImageName) -> ImageName:
        """`image` pinned to the digest its tag points to now; a pinned image comes back as is."""
        if image.pinned:
            return image
        known = self.remembered(image)
        if known is not None:
            return known
        lock = self._lock(image)
        try:
            with lock:  # one HEAD per tag at a time: callers after it take its answer
                known = self.remembered(image)
                if known is None:
                    digest = self._head_digest(image)
                    self._keep(image, digest)
                    known = image.with_digest(digest)
        finally:
            with self._guard:
                if self._locks.get(image) is lock:  # a caller that comes later makes a new one
                    del self._locks[image]
        return known

    def _lock(self, image: ImageName) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(image, threading.Lock())

    def _keep(self, image: ImageName, digest: str) -> None:
        with self._guard:
            self._seen.pop(image, None)  # to the end: the least recently pinned go first
            self._seen[image] = (digest, time.monotonic())
            while len(self._seen) > self._remember:
                del self._seen[next(iter(self._seen))]

    def remembered(self, image: ImageName) -> ImageName | None:
        """`image` pinned from what this resolver knows and still trusts, without asking the
        registry; None when it would have to ask."""
        if image.pinned:
            return image
        seen = self._seen.get(image)
        if seen is None or (self._ttl is not None and time.monotonic() - seen[1] > self._ttl):
            return None
        return image.with_digest(seen[0])

    def confirm(self, image: ImageName) -> None:
        """Raise unless the registry serves `image` (by digest if pinned) to this resolver's
        credentials: one HEAD, never remembered. RegistryAuthError when they are refused or
        missing, BaseImageNotFound when it has no such image."""
        self._head(image, image.digest or image.tag or "latest", f"could not read {image}")

    def _head_digest(self, image: ImageName) -> str:
        response, url = self._head(
            image, image.tag or "latest", "could not resolve the base image's tag"
        )
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(
                "the registry did not return Docker-Content-Digest",
                endpoint=url,
                status=response.status_code,
            )
        return str(digest)

    def _head(self, image: ImageName, reference: str, failure: str) -> tuple[httpx.Response, str]:
        """One manifest HEAD of `image` at `reference` (a tag or digest): the answer and its
        URL; BaseImageNotFound on 404, `failure` for any other error."""
        url = f"{self._http.base_url(image.domain)}/v2/{image.repository}/manifests/{reference}"
        response = self._http.request(
            "HEAD",
            url,
            scopes=[repository_scope(image.repository, "pull")],
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if response.status_code == 404:
            raise BaseImageNotFound(f"image {image} not found", endpoint=url, status=404)
        check(response, failure)
        return response, url
