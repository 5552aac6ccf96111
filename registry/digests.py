"""Resolve an image tag to the digest its registry serves now ("follow" policy).

One manifest HEAD per image, accepting indexes and manifests alike: the digest of whatever the tag
points to (a multi-platform index stays an index; the platform is a separate input of the key).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import httpx

from hashing.imageref import DEFAULT_DOMAIN, ImageName
from registry.errors import ImageNotFound, RegistryAuthError, RegistryError, RegistryUnavailable

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
# Docker Hub serves its API on another host than the name images carry.
_DOCKER_HUB_API = "registry-1.docker.io"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def registry_base_url(domain: str, insecure: Iterable[str] = ()) -> str:
    """`http://` for loopback registries and the ones configured insecure, else `https://`."""
    host = _DOCKER_HUB_API if domain == DEFAULT_DOMAIN else domain
    return ("http://" if domain in set(insecure) or is_loopback(domain) else "https://") + host


def is_loopback(domain: str) -> bool:
    """True for `localhost[:port]`, `127.x.y.z[:port]` and `[::1][:port]`."""
    host = domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DigestResolver:
    """Resolves tags to digests over HTTP; remembers answers for its own lifetime only."""

    def __init__(
        self,
        *,
        insecure: Iterable[str] = (),
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self._insecure = tuple(insecure)
        self._client = client or httpx.Client(
            timeout=timeout, transport=httpx.HTTPTransport(retries=2)
        )
        self._seen: dict[ImageName, str] = {}

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> DigestResolver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def resolve(self, image: ImageName) -> ImageName:
        """`image` pinned to the digest its tag points to now; a pinned image comes back as is."""
        if image.pinned:
            return image
        digest = self._seen.get(image)
        if digest is None:
            digest = self._head_digest(image)
            self._seen[image] = digest
        return image.with_digest(digest)

    def _head_digest(self, image: ImageName) -> str:
        url = (
            f"{registry_base_url(image.domain, self._insecure)}"
            f"/v2/{image.repository}/manifests/{image.tag}"
        )
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        response = self._request("HEAD", url, headers)
        if response.status_code == 401:
            token = self._anonymous_token(response, url)
            headers["Authorization"] = f"Bearer {token}"
            response = self._request("HEAD", url, headers)
        if response.status_code == 404:
            raise ImageNotFound(f"base image {image} not found", endpoint=url, status=404)
        _raise_for_status(response, url, "could not resolve the base image's tag")
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(
                "the registry did not return Docker-Content-Digest",
                endpoint=url,
                status=response.status_code,
            )
        return str(digest)

    def _anonymous_token(self, challenge: httpx.Response, url: str) -> str:
        """The bearer-token flow of Docker Hub, GHCR, ACR and Harbor, without credentials."""
        header = challenge.headers.get("WWW-Authenticate", "")
        if not header.lower().startswith("bearer "):
            raise RegistryAuthError("the registry asks for credentials", endpoint=url, status=401)
        params = dict(_CHALLENGE_PARAM.findall(header))
        realm = params.pop("realm", None)
        if realm is None:
            raise RegistryAuthError("bearer challenge without realm", endpoint=url, status=401)
        response = self._request("GET", realm, {}, params=params)
        _raise_for_status(response, realm, "the token service refused an anonymous token")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryAuthError("the token service sent no token", endpoint=realm)
        return str(token)

    def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return self._client.request(method, url, headers=headers, params=params)
        except httpx.TimeoutException as exc:
            raise RegistryUnavailable("registry timed out", endpoint=url) from exc
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"registry unreachable ({exc})", endpoint=url) from exc


def _raise_for_status(response: httpx.Response, url: str, message: str) -> None:
    status = response.status_code
    if status in (401, 403):
        raise RegistryAuthError(f"{message}: access denied", endpoint=url, status=status)
    if status >= 500:
        raise RegistryUnavailable(f"{message}: registry error", endpoint=url, status=status)
    if status >= 400:
        raise RegistryError(message, endpoint=url, status=status)
