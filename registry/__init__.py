"""OCI registries: where images live, found by key. This issue's part: resolving base-image tags."""

from registry.digests import DigestResolver, is_loopback, registry_base_url
from registry.errors import ImageNotFound, RegistryAuthError, RegistryError, RegistryUnavailable

__all__ = [
    "DigestResolver",
    "ImageNotFound",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnavailable",
    "is_loopback",
    "registry_base_url",
]
