"""envctl's settings: read once from the environment at the edge, then passed down."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Configuration of one envctl process (CLI invocation or server)."""

    default_base_image: str | None = None
    insecure_registries: tuple[str, ...] = ()
    registry_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from `ENVCTL_*` variables."""
        return cls(
            default_base_image=env.get("ENVCTL_BASE_IMAGE") or None,
            insecure_registries=tuple(
                r.strip() for r in env.get("ENVCTL_INSECURE_REGISTRIES", "").split(",") if r.strip()
            ),
            registry_timeout=float(env.get("ENVCTL_REGISTRY_TIMEOUT", "10")),
        )
