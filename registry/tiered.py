"""Two registries as one: the workspace's own, then the shared global one.

A tiered lookup is itself a Registry (as distribution's proxy store is itself a store): the
resolver never asks which tier it holds. A global hit is copied into the workspace (blobs
verified, mounted when both tiers share a registry, the tag last) and reported with
`source: global`; from then on the workspace has it.
"""

from __future__ import annotations

from dataclasses import replace

from hashing import EnvKey
from registry.base import ImageRef
from registry.metadata import EnvMetadata
from registry.store import StoreRegistry


class TieredRegistry:
    """Workspace first, global second; writes go to the workspace only."""

    def __init__(self, workspace: StoreRegistry, global_: StoreRegistry) -> None:
        self.workspace = workspace
        self.global_ = global_

    @property
    def address(self) -> str:
        """The workspace's address: where this registry's images end up."""
        return self.workspace.address

    def lookup(self, key: EnvKey) -> ImageRef | None:
        """The workspace's image of `key`, promoting it from the global registry if needed."""
        hit = self.workspace.lookup(key)
        if hit is not None:
            return hit
        if self.global_.lookup(key) is None:
            return None
        return replace(self.workspace.copy_from(self.global_, key), source="global")

    def remembered(self, key: EnvKey) -> ImageRef | None:
        """The workspace's confirmed hit of `key` (a promoted image is one, once copied)."""
        return self.workspace.remembered(key)

    def get_metadata(self, key: EnvKey) -> EnvMetadata | None:
        """The workspace's metadata of `key`, else the global registry's."""
        found = self.workspace.get_metadata(key)
        return found if found is not None else self.global_.get_metadata(key)

    def put_metadata(self, key: EnvKey, metadata: EnvMetadata) -> None:
        """Store metadata in the workspace."""
        self.workspace.put_metadata(key, metadata)

    def copy_from(self, source: StoreRegistry, key: EnvKey) -> ImageRef:
        """Copy an image into the workspace."""
        return self.workspace.copy_from(source, key)

    def keys(self) -> list[EnvKey]:
        """Every key either tier holds."""
        return sorted(set(self.workspace.keys()) | set(self.global_.keys()))

    def delete(self, key: EnvKey) -> None:
        """Remove `key` from the workspace (the global registry is the admin's to change)."""
        self.workspace.delete(key)
