"""What a build needs to know of where it runs: its home, and the credentials and checks for
what it reads and writes (a service gives each workspace's builds their own)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hashing import ImageName
from registry.auth import Credentials


@dataclass(frozen=True)
class BuildConfig:
    """Where a build keeps its files, and where it finds packages."""

    home: Path
    credentials: Credentials | None = None
    # the registry hosts whose credentials the engine may pull with (None: every one the
    # Docker config holds, as for a user's own CLI); a service gives a workspace's build only
    # its own, the global registry's and the operator's allowed ones
    pull_registries: tuple[str, ...] | None = None
    # credentials the engine pulls with from these hosts, in place of the Docker config's: a
    # workspace's own for its registry (service.tables.workspace_credentials)
    pull_credentials: Mapping[str, Credentials] = field(default_factory=dict)
    # raises unless the workspace may read an image with exactly those credentials: the engine
    # serves an image any earlier build pulled without asking the registry again, so a build
    # of a shared service proves its access to every image it reads before the engine runs
    confirm_read: Callable[[ImageName], None] | None = None
    # hosts spoken to over plain HTTP (loopback ones always are)
    insecure: tuple[str, ...] = ()
    # the credentials envctl itself reads a base image with, by host (None: pull_credentials)
    base_credentials: Callable[[str], Credentials | None] | None = None

    def credentials_for(self, host: str) -> Credentials | None:
        """What envctl reads images on `host` with: what the engine would pull with."""
        if self.base_credentials is not None:
            return self.base_credentials(host)
        return self.pull_credentials.get(host)
