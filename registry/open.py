"""Open a registry by address: `oci:PATH` is an OCI layout folder, anything else a registry."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from registry.auth import Credentials, docker_config_credentials
from registry.base import Registry
from registry.layout import LayoutRegistry
from registry.oci import OciRegistry
from registry.store import StoreRegistry
from registry.tiered import TieredRegistry

LAYOUT_PREFIX = "oci:"


def open_registry(
    address: str,
    *,
    credentials: Credentials | None = None,
    insecure: Iterable[str] = (),
    timeout: float = 10.0,
) -> StoreRegistry:
    """A registry for `address`; credentials default to the Docker config file's for its host."""
    if address.startswith(LAYOUT_PREFIX):
        return LayoutRegistry(Path(address[len(LAYOUT_PREFIX) :]))
    host = address.split("/", 1)[0]
    return OciRegistry(
        address,
        credentials=credentials or docker_config_credentials(host),
        insecure=tuple(insecure),
        timeout=timeout,
    )


def open_tiers(workspace: StoreRegistry, global_: StoreRegistry | None) -> Registry:
    """The workspace alone, or workspace-then-global when a global registry is configured."""
    return workspace if global_ is None else TieredRegistry(workspace, global_)
