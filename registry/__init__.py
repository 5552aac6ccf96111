"""Registries: where environment images live, found by key (see `registry.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hashing.lazy import exports

if TYPE_CHECKING:
    from registry.auth import Credentials, docker_config_credentials
    from registry.base import ImageRef, Registry
    from registry.digests import DigestResolver
    from registry.errors import ImageNotFound, RegistryAuthError, RegistryError, RegistryUnavailable
    from registry.http import is_loopback, registry_base_url
    from registry.layout import LayoutRegistry
    from registry.metadata import EnvMetadata
    from registry.oci import InvalidRegistryAddress, OciRegistry
    from registry.open import open_registry, open_tiers
    from registry.store import StoreRegistry
    from registry.tiered import TieredRegistry

_WHERE = {
    "Credentials": "registry.auth",
    "docker_config_credentials": "registry.auth",
    "ImageRef": "registry.base",
    "Registry": "registry.base",
    "DigestResolver": "registry.digests",
    "ImageNotFound": "registry.errors",
    "RegistryAuthError": "registry.errors",
    "RegistryError": "registry.errors",
    "RegistryUnavailable": "registry.errors",
    "is_loopback": "registry.http",
    "registry_base_url": "registry.http",
    "LayoutRegistry": "registry.layout",
    "EnvMetadata": "registry.metadata",
    "InvalidRegistryAddress": "registry.oci",
    "OciRegistry": "registry.oci",
    "open_registry": "registry.open",
    "open_tiers": "registry.open",
    "StoreRegistry": "registry.store",
    "TieredRegistry": "registry.tiered",
}
__getattr__ = exports(__name__, _WHERE)

__all__ = [
    "Credentials",
    "DigestResolver",
    "EnvMetadata",
    "ImageNotFound",
    "ImageRef",
    "InvalidRegistryAddress",
    "LayoutRegistry",
    "OciRegistry",
    "Registry",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnavailable",
    "StoreRegistry",
    "TieredRegistry",
    "docker_config_credentials",
    "is_loopback",
    "open_registry",
    "open_tiers",
    "registry_base_url",
]
