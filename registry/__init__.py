"""Registries: where environment images live, found by key (see `registry.base`)."""

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
