"""envctl's settings: read once at the edge (environment and an optional config file), then
passed down. Environment variables win over the file.

    ENVCTL_CONFIG                  config file (default: $XDG_CONFIG_HOME/envctl/config.yml if any)
    ENVCTL_WORKSPACE_REGISTRY      HOST[:PORT]/NAMESPACE, or oci:PATH (an OCI layout folder)
    ENVCTL_GLOBAL_REGISTRY         the same, for the shared registry (optional)
    ENVCTL_{WORKSPACE,GLOBAL}_REGISTRY_USERNAME / _PASSWORD
                                   credentials (else the Docker config file's, for that host)
    ENVCTL_BASE_IMAGE              default base image for conda files
    ENVCTL_INSECURE_REGISTRIES     comma-separated hosts reached over plain HTTP (and loopback)
    ENVCTL_REGISTRY_TIMEOUT        seconds
    ENVCTL_HOME                    envctl's own data (default: $XDG_DATA_HOME/envctl): the
                                   embedded registry `oci:$ENVCTL_HOME/registry`, the embedded
                                   database, the package and layer caches, build folders
    ENVCTL_CHANNELS                comma-separated conda channels (URLs or names), in priority
                                   order; they replace the spec's own channels
    ENVCTL_BUILD_TIMEOUT           seconds of running time a build may take (default 3600)
    ENVCTL_BUILD_MEMORY            memory limit of each build step in bytes, or with k/m/g, no
                                   swap on top (default 4g; 0: none)
    ENVCTL_BUILD_CPUS              CPU limit of each build step (default 2; e.g. 1.5; 0: none)
    ENVCTL_BUILD_CGROUP_PARENT     the cgroup build steps run under (the engine's default if
                                   unset): give it a pids.max to bound their processes
    ENVCTL_BUILD_NETWORK           network of build steps: none (the default), default (the
                                   engine's bridge: the internet and whatever the host routes
                                   to) or host (the host's own, loopback services included)
    ENVCTL_ALLOWED_BASE_REGISTRIES comma-separated registries or namespaces (HOST[:PORT][/PATH])
                                   a workspace's images may come from, besides its own
                                   namespace, the global registry and ENVCTL_BASE_IMAGE's
                                   repository
    ENVCTL_ALLOW_URL_SOURCES       1 to let specs ADD URLs and name pip URL requirements (public
                                   addresses only); default 0: refused
    ENVCTL_PIP_INDEX_URL           the index pip requirements are resolved and fetched from
    ENVCTL_PIP_FIND_LINKS          comma-separated folders or pages of wheels (without an index
                                   URL, only these are used)
    DOCKER_HOST                    the Docker engine (default: the local socket)

    The service (`envctl serve`) and its clients:
    ENVCTL_URL                     an envctl server: the CLI then talks to it (else embedded);
                                   several, comma-separated, are servers of one service (one
                                   database), tried in order from the last that answered
    ENVCTL_UNREACHABLE_AFTER       seconds a client keeps trying when no ENVCTL_URL answers
                                   (a server may be restarting) before it exits 3 (default 30)
    ENVCTL_TOKEN                   the bearer token sent to it
    ENVCTL_WORKSPACE               the workspace the embedded CLI works in (default: default)
    ENVCTL_DATABASE_URL            build records (SQLAlchemy URL; default SQLite in ENVCTL_HOME)
    ENVCTL_WORKERS                 builds one `envctl serve` or `envctl worker` runs at once
                                   (default 2; 0: a server that runs none, for `envctl worker`s)
    ENVCTL_LEASE_SECONDS           how long a running build's lease lasts without renewal: a
                                   worker that dies is taken over within it (default 30)
    ENVCTL_MAX_RUNNING             running builds per workspace (default 2)
    ENVCTL_MAX_QUEUED              queued builds per workspace before 429 (default 32)
    ENVCTL_TAG_TTL                 seconds a server trusts a base-image tag's digest (default 10)
    ENVCTL_TOKEN_TTL               seconds a server trusts a token it checked: a revocation
                                   takes effect within this time, open log streams included
                                   (default 1)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from client.servers import UNREACHABLE_AFTER, server_urls
from hashing import SpecError
from hashing.validate import validate
from hashing.yamldoc import load_yaml

if TYPE_CHECKING:
    from registry.auth import Credentials

# Each build step's limits unless the operator says otherwise: enough for a compile-heavy pip or
# conda step, and a bound on what one tenant's step takes from the engine's host.
DEFAULT_BUILD_MEMORY = 4 << 30
DEFAULT_BUILD_CPUS = 2.0


@dataclass(frozen=True)
class Settings:
    """Configuration of one envctl process (a CLI invocation or a server)."""

    default_base_image: str | None = None
    workspace_registry: str | None = None
    global_registry: str | None = None
    workspace_credentials: Credentials | None = None
    global_credentials: Credentials | None = None
    insecure_registries: tuple[str, ...] = ()
    registry_timeout: float = 10.0
    home: Path = Path(".envctl")
    channels: tuple[str, ...] = ()
    build_timeout: float = 3600.0
    build_memory: int | None = DEFAULT_BUILD_MEMORY
    build_cpus: float | None = DEFAULT_BUILD_CPUS
    build_cgroup_parent: str | None = None
    build_network: str = "none"
    allowed_base_registries: tuple[str, ...] = ()
    allow_url_sources: bool = False
    docker_host: str | None = None
    pip_index_url: str | None = None
    pip_find_links: tuple[str, ...] = ()
    server_urls: tuple[str, ...] = ()
    unreachable_after: float = UNREACHABLE_AFTER
    token: str | None = None
    workspace: str = "default"
    database_url: str | None = None
    workers: int = 2
    max_running: int = 2
    max_queued: int = 32
    tag_ttl: float = 10.0
    token_ttl: float = 1.0
    lease_seconds: float = 30.0

    @property
    def server_url(self) -> str | None:
        """The first server's address (whether the CLI is a client); a client takes them all
        (`server_urls`)."""
        return self.server_urls[0] if self.server_urls else None

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of the build records: configured, or SQLite in envctl's home."""
        return self.database_url or f"sqlite:///{self.home / 'envctl.db'}"

    def exposures(self) -> list[str]:
        """What these settings leave open or unbounded for a shared server's tenants, one
        line each (README, "Security model"); none with the defaults."""
        lines = []
        if self.build_network != "none":
            lines.append(
                f"ENVCTL_BUILD_NETWORK={self.build_network}: build steps reach the engine's "
                "network, the host's loopback services included with 'host'"
            )
        if self.allow_url_sources:
            lines.append(
                "ENVCTL_ALLOW_URL_SOURCES=1: specs make the engine and pip fetch public URLs"
            )
        if self.build_memory is None:
            lines.append("ENVCTL_BUILD_MEMORY=0: a build step may take all of the host's memory")
        if self.build_cpus is None:
            lines.append("ENVCTL_BUILD_CPUS=0: a build step may take every CPU of the host")
        if self.build_cgroup_parent is None:
            lines.append(
                "ENVCTL_BUILD_CGROUP_PARENT is not set: nothing bounds a build step's processes"
            )
        if self.token_ttl > 1.0:
            lines.append(
                f"ENVCTL_TOKEN_TTL={self.token_ttl:g}: a revoked token works for up to that long"
            )
        return lines

    @property
    def embedded_registry(self) -> str:
        """The workspace registry when none is configured: an OCI layout in envctl's home."""
        return f"oci:{self.home / 'registry'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from `ENVCTL_*` variables, over the config file's."""
        file = _ConfigFile()
        path = env.get("ENVCTL_CONFIG") or _default_config(env)
        if path is not None and (env.get("ENVCTL_CONFIG") or Path(path).exists()):
            file = _read_config(Path(path))
        insecure = env.get("ENVCTL_INSECURE_REGISTRIES")
        return cls(
            default_base_image=env.get("ENVCTL_BASE_IMAGE") or file.base_image,
            workspace_registry=env.get("ENVCTL_WORKSPACE_REGISTRY") or file.workspace_registry,
            global_registry=env.get("ENVCTL_GLOBAL_REGISTRY") or file.global_registry,
            workspace_credentials=_credentials(env, "ENVCTL_WORKSPACE_REGISTRY"),
            global_credentials=_credentials(env, "ENVCTL_GLOBAL_REGISTRY"),
            insecure_registries=_list(insecure)
            if insecure is not None
            else tuple(file.insecure_registries),
            registry_timeout=_number(env, "ENVCTL_REGISTRY_TIMEOUT", file.registry_timeout),
            home=Path(env.get("ENVCTL_HOME") or _data_home(env) / "envctl"),
            channels=_list(env.get("ENVCTL_CHANNELS", "")),
            build_timeout=_number(env, "ENVCTL_BUILD_TIMEOUT", 3600.0),
            build_memory=_limit(
                _bytes(env.get("ENVCTL_BUILD_MEMORY")), DEFAULT_BUILD_MEMORY, "ENVCTL_BUILD_MEMORY"
            ),
            build_cpus=_limit(
                _number(env, "ENVCTL_BUILD_CPUS", None), DEFAULT_BUILD_CPUS, "ENVCTL_BUILD_CPUS"
            ),
            build_cgroup_parent=env.get("ENVCTL_BUILD_CGROUP_PARENT") or None,
            build_network=_network(env.get("ENVCTL_BUILD_NETWORK") or "none"),
            allowed_base_registries=_list(env.get("ENVCTL_ALLOWED_BASE_REGISTRIES", "")),
            allow_url_sources=_flag(env, "ENVCTL_ALLOW_URL_SOURCES"),
            docker_host=env.get("DOCKER_HOST") or None,
            pip_index_url=env.get("ENVCTL_PIP_INDEX_URL") or None,
            pip_find_links=_list(env.get("ENVCTL_PIP_FIND_LINKS", "")),
            server_urls=server_urls(env["ENVCTL_URL"]) if env.get("ENVCTL_URL") else (),
            unreachable_after=_seconds(env, "ENVCTL_UNREACHABLE_AFTER", UNREACHABLE_AFTER),
            token=env.get("ENVCTL_TOKEN") or None,
            workspace=env.get("ENVCTL_WORKSPACE") or "default",
            database_url=env.get("ENVCTL_DATABASE_URL") or None,
            workers=_count(env, "ENVCTL_WORKERS", 2, least=0),
            max_running=_count(env, "ENVCTL_MAX_RUNNING", 2),
            max_queued=_count(env, "ENVCTL_MAX_QUEUED", 32),
            tag_ttl=_number(env, "ENVCTL_TAG_TTL", 10.0),
            token_ttl=_number(env, "ENVCTL_TOKEN_TTL", 1.0),
            lease_seconds=_positive(env, "ENVCTL_LEASE_SECONDS", 30.0),
        )


@dataclass(frozen=True)
class ServiceLimits:
    """How much one service process and one workspace may do at once."""

    workers: int = 2  # builds this process runs at once
    max_running: int = 2  # per workspace, across every process
    max_queued: int = 32  # per workspace; beyond it resolve answers 429
    lease_seconds: float = 30.0  # a running build's owner renews it every third of this
    poll_seconds: float = 1.0  # how often to look for work and outcomes of other processes
    files_kept_seconds: float = 60.0  # request files no active build needs are kept this long

    @classmethod
    def of(cls, settings: Settings) -> ServiceLimits:
        """The limits `settings` configure."""
        return cls(
            workers=settings.workers,
            max_running=settings.max_running,
            max_queued=settings.max_queued,
            lease_seconds=settings.lease_seconds,
        )


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    workspace_registry: str | None = None
    global_registry: str | None = None
    base_image: str | None = None
    insecure_registries: list[str] = Field(default_factory=list)
    registry_timeout: float = 10.0


def _read_config(path: Path) -> _ConfigFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read config file: {exc.strerror}", source=str(path)) from None
    doc = load_yaml(text, str(path))
    if doc.value is None:
        return _ConfigFile()
    return validate(doc, _ConfigFile)


def _credentials(env: Mapping[str, str], prefix: str) -> Credentials | None:
    username = env.get(f"{prefix}_USERNAME")
    password = env.get(f"{prefix}_PASSWORD")
    if username and password is not None:
        from registry.auth import Credentials  # with httpx: only when credentials are set

        return Credentials(username, password)
    return None


def _default_config(env: Mapping[str, str]) -> str | None:
    base = env.get("XDG_CONFIG_HOME") or (
        str(Path(env["HOME"]) / ".config") if "HOME" in env else None
    )
    return None if base is None else os.path.join(base, "envctl", "config.yml")


def _data_home(env: Mapping[str, str]) -> Path:
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"])
    return Path(env.get("HOME", ".")) / ".local" / "share"


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(text: str | None) -> int | None:
    if not text:
        return None
    number = text.strip().lower().removesuffix("b")
    scale = _UNITS.get(number[-1:], 1)
    try:
        return int(float(number.rstrip("kmg")) * scale)
    except ValueError:
        raise SpecError(
            f"not a size: {text!r} (bytes, or with k, m or g)", source="ENVCTL_BUILD_MEMORY"
        ) from None


def _network(text: str) -> str:
    if text not in ("none", "host", "default"):
        raise SpecError(f"{text!r}: use none, host or default", source="ENVCTL_BUILD_NETWORK")
    return text


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = (env.get(name) or "0").strip().lower()
    if text not in ("0", "1", "true", "false", "yes", "no"):
        raise SpecError(f"{text!r}: use 1 or 0", source=name)
    return text in ("1", "true", "yes")


def _limit(value: Any, default: Any, name: str) -> Any:
    """A resource limit from the environment: unset is the default, 0 is no limit."""
    if value is None:
        return default
    if value < 0:
        raise SpecError(f"a limit cannot be negative: {value}", source=name)
    return None if value == 0 else value


def _number(env: Mapping[str, str], name: str, default: float | None) -> Any:
    text = env.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise SpecError(f"not a number: {text!r}", source=name) from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"not a positive number of seconds: {text!r}", source=name)
    return value


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = float(_number(env, name, default))
    if value <= 0:
        raise SpecError(f"not a positive number: {value:g}", source=name)
    return value


def _count(env: Mapping[str, str], name: str, default: int, *, least: int = 1) -> int:
    text = env.get(name)
    if not text:
        return default
    if not text.strip().isdigit() or int(text) < least:
        what = "positive" if least == 1 else "non-negative"
        raise SpecError(f"not a {what} whole number: {text!r}", source=name)
    return int(text)
